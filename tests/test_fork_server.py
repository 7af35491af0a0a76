"""Workers forked from the fork server: they serve like spawned ones, die and restart like
them, and the frontend never imports torch (GPUs are counted from the driver)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from dagserve.engine.workers.pool import visible_gpu_count
from server_utils import ECHO_HANDLER, build_mar, start_server, wait_until

TORCH_HANDLER = '''
import torch


def handle(data, context):
    if data is None:
        return None
    return [{"sum": float(torch.tensor([1.0, 2.0]).sum()), "pid": __import__("os").getpid()}
            for _ in data]
'''


def test_gpu_count_comes_from_the_driver_and_cuda_visible_devices(tmp_path):
    driver = tmp_path / "gpus"
    assert visible_gpu_count(None, {}, driver) == 0  # no driver: CPU
    driver.mkdir()
    for address in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (driver / address).mkdir()
    assert visible_gpu_count(None, {}, driver) == 3
    assert visible_gpu_count(None, {"CUDA_VISIBLE_DEVICES": "1,2"}, driver) == 2
    assert visible_gpu_count(None, {"CUDA_VISIBLE_DEVICES": ""}, driver) == 0
    assert visible_gpu_count(None, {"CUDA_VISIBLE_DEVICES": "0,-1,2"}, driver) == 1
    assert visible_gpu_count(2, {}, driver) == 2  # number_of_gpu wins


def test_the_frontend_does_not_import_torch():
    code = ("import sys; import dagserve.engine.server, dagserve.engine.runtime; "
            "from dagserve.engine.workers.pool import visible_gpu_count; visible_gpu_count(None); "
            "from dagserve.engine.system_metrics import sample_gpus; sample_gpus(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "False"


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("fork")
    store = work / "model_store"
    build_mar(store, "echo", ECHO_HANDLER)
    build_mar(store, "torchy", TORCH_HANDLER)
    with start_server(work, model_store=store, config={"default_workers_per_model": 1},
                      args=["--disable-token-auth", "--enable-model-api",
                            "--models", "echo=echo.mar", "torchy=torchy.mar"]) as srv:
        yield srv


def _worker_pids(srv, model: str) -> list[int]:
    reply = requests.get(f"{srv.management_url}/models/{model}", timeout=10)
    return [w["pid"] for w in reply.json()[0]["workers"]]


def test_workers_are_forked_from_the_fork_server_and_serve(server):
    resp = requests.post(f"{server.inference_url}/predictions/torchy", data=b"x", timeout=30)
    assert resp.status_code == 200 and resp.json()["sum"] == 3.0
    [pid] = _worker_pids(server, "torchy")
    assert _comm(pid) == "dagserve-worker"
    fork_server = _ppid(pid)
    assert fork_server != server.pid and _ppid(fork_server) == server.pid
    assert b"workers.zygote" in Path(f"/proc/{fork_server}/cmdline").read_bytes()
    # a torch-free model loaded with the server did not wait for the fork server to import
    # torch; one registered once it is up is forked too
    assert requests.post(f"{server.inference_url}/predictions/echo", data=b"hi",
                         timeout=30).content == b"hi"
    resp = requests.post(f"{server.management_url}/models",
                         params={"url": "echo.mar", "model_name": "late", "initial_workers": 1},
                         timeout=60)
    assert resp.status_code == 200, resp.text
    assert _ppid(_worker_pids(server, "late")[0]) == fork_server
    assert requests.post(f"{server.inference_url}/predictions/late", data=b"hey",
                         timeout=30).content == b"hey"


def test_a_killed_forked_worker_fails_its_request_and_is_replaced(server):
    [pid] = _worker_pids(server, "torchy")
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: _worker_pids(server, "torchy") not in ([], [pid]), timeout=30)
    assert wait_until(lambda: requests.post(f"{server.inference_url}/predictions/torchy",
                                            data=b"x", timeout=30).status_code == 200,
                      timeout=30)
    [new] = _worker_pids(server, "torchy")
    assert new != pid and _comm(new) == "dagserve-worker"


def test_fork_server_off_spawns_interpreters(tmp_path):
    store = tmp_path / "model_store"
    build_mar(store, "echo", ECHO_HANDLER)
    with start_server(tmp_path, model_store=store, config={"worker_fork_server": "false",
                                                             "default_workers_per_model": 1},
                      args=["--disable-token-auth", "--models", "echo=echo.mar"]) as srv:
        [pid] = _worker_pids(srv, "echo")
        assert _ppid(pid) == srv.pid
        assert b"dagserve.engine.workers.main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert requests.post(f"{srv.inference_url}/predictions/echo", data=b"ok",
                             timeout=30).content == b"ok"
