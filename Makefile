# The two commands of the README: `make serve` and `make test`. Both set everything up first
# and are idempotent. torch is installed first from the local CPU wheel (torch==2.13.0), so
# pip never fetches the CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
EXAMPLES_STAMP := $(VENV)/.examples-installed
ALIASES_STAMP := $(VENV)/.aliases-installed
RAY_STAMP := $(VENV)/.ray-installed
PORT_ARGS ?=

.PHONY: setup setup-examples browser test faults fuzz serve examples bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.py | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,fast,grpc,otel]'
	touch $@

# torchserve / torch-model-archiver / torch-workflow-archiver as aliases (a real
# TorchServe's scripts are never replaced)
$(ALIASES_STAMP): $(STAMP)
	$(VENV)/bin/dagserve install-aliases
	touch $@

setup: $(STAMP) $(ALIASES_STAMP)

$(EXAMPLES_STAMP): $(STAMP)
	$(PIP) install -q -e '.[examples]' || echo "examples extra not installed: the text workflow is skipped"
	touch $@

setup-examples: $(EXAMPLES_STAMP) $(ALIASES_STAMP)

# Debian's chromium, for the dashboard's browser test (skipped without it)
browser:
	@command -v chromium >/dev/null 2>&1 || \
		(apt-get update -q && apt-get install -y -q chromium) || \
		echo "chromium not installed: the dashboard's browser test will be skipped"

# Ray is optional (dagserve[ray]); without it tests/test_ray_cluster.py is skipped.
$(RAY_STAMP): $(STAMP)
	$(PIP) install -q -e '.[ray]' || echo "ray extra not installed: the Ray cluster test is skipped"
	touch $@

test: setup-examples $(RAY_STAMP) browser
	@command -v openssl >/dev/null || (apt-get update -qq && apt-get install -y -qq openssl) \
		|| echo "openssl missing: the TLS tests are skipped"
	$(PY) -m pytest -q

# The fault suite alone (also part of `make test`), writing the figures of docs/reliability.md.
FAULT_REPORT ?= logs/fault-report.jsonl
faults: setup
	mkdir -p $(dir $(FAULT_REPORT)) && rm -f $(FAULT_REPORT)
	DAGSERVE_FAULT_REPORT=$(FAULT_REPORT) $(PY) -m pytest -q tests/faults tests/fuzz
	$(PY) tests/faults/report.py $(FAULT_REPORT)

# Schema-driven fuzzing of the REST APIs, longer than the suite's run (zero 5xx allowed).
FUZZ_EXAMPLES ?= 150
fuzz: setup
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/fuzz

examples: setup-examples
	$(PY) examples/build.py --model-store model_store --workflow-store wf_store

serve: examples
	$(VENV)/bin/dagserve --start --foreground --model-store model_store --workflow-store wf_store \
		--models shapes=shapes.mar shapes_ts=shapes_ts.mar streaming_words=streaming_words.mar \
		--workflows all \
		--disable-token-auth --ncs $(PORT_ARGS)

# PEER: a comma list of torchserve, triton, rayserve (each installed once into its own venv
# under benchmarks/). wrk is the load client when it can be installed; else a Python one.
bench: setup
	@command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null 2>&1 \
		|| echo "wrk is not installed: benchmarks use the Python load client"
	$(PY) -m benchmarks.run $(if $(PEER),--peer $(PEER),)

clean:
	rm -rf $(VENV) logs build dist *.egg-info
