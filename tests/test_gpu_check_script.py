"""scripts/gpu_check.py, the CUDA check, on this machine: its whole run with every worker on
the CPU (``--expect-device cpu``), its comparison, and its refusal to pretend when CUDA is
expected but missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from server_utils import REPO_ROOT, _child_env

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_reports_device_shape_and_value_differences():
    gpu_check = _module()
    good = {"devices": ["cuda:0"], "values": [1.0, 2.0]}
    assert gpu_check.compare("m", good, ["cuda:0"], [1.0, 2.00001]) == []
    assert gpu_check.compare("m", good, ["cpu"], [1.0, 2.0]) == \
        ["m: ran on ['cuda:0'], expected ['cpu']"]
    assert "differs by up to" in gpu_check.compare("m", good, ["cuda:0"], [1.0, 2.1])[0]
    assert "(2,) values, expected (3,)" in gpu_check.compare("m", good, ["cuda:0"], [1, 2, 3])[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: the real check applies")
def test_expecting_cuda_without_it_is_an_error():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120, env=_child_env(None))
    assert done.returncode == 2 and "no CUDA device here" in done.stderr


def test_the_whole_check_runs_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--expect-device", "cpu",
                           "--workdir", str(tmp_path)], capture_output=True, text=True,
                          timeout=400, env=_child_env({"TMPDIR": str(tmp_path)}))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    log = (tmp_path / "logs" / "ts_log.log").read_text()
    assert "asks for GPUs" in log  # the deviceIds: [0] models fell back to the CPU
