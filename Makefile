# The two commands of the README: `make serve` and `make test`. Both set everything up first
# and are idempotent. torch is installed first from the local CPU wheel (torch==2.13.0), so
# pip never fetches the CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
EXAMPLES_STAMP := $(VENV)/.examples-installed
RAY_STAMP := $(VENV)/.ray-installed
PORT_ARGS ?=

.PHONY: setup setup-examples test serve examples bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.py | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,fast]'
	touch $@

setup: $(STAMP)

$(EXAMPLES_STAMP): $(STAMP)
	$(PIP) install -q -e '.[examples]' || echo "examples extra not installed: the text workflow is skipped"
	touch $@

setup-examples: $(EXAMPLES_STAMP)

# Ray is optional (dagserve[ray]); without it tests/test_ray_cluster.py is skipped.
$(RAY_STAMP): $(STAMP)
	$(PIP) install -q -e '.[ray]' || echo "ray extra not installed: the Ray cluster test is skipped"
	touch $@

test: setup-examples $(RAY_STAMP)
	$(PY) -m pytest -q

examples: setup-examples
	$(PY) examples/build.py --model-store model_store --workflow-store wf_store

serve: examples
	$(VENV)/bin/dagserve --start --foreground --model-store model_store --workflow-store wf_store \
		--models shapes=shapes.mar shapes_ts=shapes_ts.mar --workflows all \
		--disable-token-auth --ncs $(PORT_ARGS)

bench: setup
	$(PY) -m benchmarks.run $(if $(PEER),--peer $(PEER),)

clean:
	rm -rf $(VENV) logs build dist *.egg-info
