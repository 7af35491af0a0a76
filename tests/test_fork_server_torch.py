"""The fork server imports torch only for the first worker that uses it: an echo server never
loads torch, a torch worker forked later shares torch's pages, and the hint that says which
workers use torch reads the handler's own imports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import requests

from dagserve.engine.models import _uses_torch
from dagserve.engine.tasks import TaskOwner
from dagserve.engine.workers.launch import ForkedWorker, ForkServerLauncher, imports_torch
from dagserve.engine.workers.settings import WorkerSettings
from server_utils import ECHO_HANDLER, build_mar, start_server
from test_fork_server import TORCH_HANDLER, _comm, _ppid, _worker_pids

def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def _uss_mib(pid: int) -> float:
    kb = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        kb[key] = int(rest.split()[0])
    return (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024


def test_torch_is_imported_by_the_fork_server_for_the_first_torch_worker(tmp_path):
    store = tmp_path / "model_store"
    build_mar(store, "echo", ECHO_HANDLER)
    build_mar(store, "torchy", TORCH_HANDLER)
    with start_server(tmp_path, model_store=store, config={"default_workers_per_model": 1},
                      args=["--disable-token-auth", "--enable-model-api",
                            "--models", "echo=echo.mar"]) as srv:
        [echo] = _worker_pids(srv, "echo")
        fork_server = _ppid(echo)  # forked: readiness no longer waits for torch
        assert _comm(echo) == "dagserve-worker" and _ppid(fork_server) == srv.pid
        assert b"workers.zygote" in Path(f"/proc/{fork_server}/cmdline").read_bytes()
        assert "libtorch" not in _maps(fork_server) and "libtorch" not in _maps(echo)
        assert _threads(fork_server) == 1
        assert requests.post(f"{srv.inference_url}/predictions/echo", data=b"hi",
                             timeout=30).content == b"hi"

        resp = requests.post(f"{srv.management_url}/models",
                             params={"url": "torchy.mar", "initial_workers": 2,
                                     "synchronous": "true"}, timeout=120)
        assert resp.status_code == 200, resp.text
        resp = requests.post(f"{srv.inference_url}/predictions/torchy", data=b"x", timeout=30)
        assert resp.status_code == 200 and resp.json()["sum"] == 3.0
        workers = _worker_pids(srv, "torchy")
        assert len(workers) == 2 and all(_ppid(pid) == fork_server for pid in workers)
        assert "libtorch" in _maps(fork_server)  # imported there, before the forks
        # still one thread (OpenBLAS's pool stops at each fork) and CUDA never initialised
        assert _threads(fork_server) == 1 and "libcuda" not in _maps(fork_server)
        # torch's pages are the fork server's, shared: far less than a torch import's own
        # ~200 MiB private to each worker
        assert max(_uss_mib(pid) for pid in workers) < 100
        [still] = _worker_pids(srv, "echo")
        assert still == echo and "libtorch" not in _maps(echo)


def test_the_torch_hint_reads_the_handler_imports(tmp_path):
    cases = {
        "import torch\n": True,
        "import os\n\nfrom torch import nn\n": True,
        "import json, torchvision as tv\n": True,
        "def handle(data, context):\n    import torch.nn.functional as F\n": True,
        "# no import torch here\nTEXT = 'import torch'\n": False,
        '"""Says torch in its docstring."""\nimport mytorch\n': False,
        ECHO_HANDLER: False,
        TORCH_HANDLER: True,
    }
    for i, (source, expected) in enumerate(cases.items()):
        path = tmp_path / f"handler_{i}.py"
        path.write_text(source)
        assert imports_torch(path) is expected, source
        assert _uses_torch(tmp_path, {}, f"handler_{i}.py") is expected, source
    # a serialized model, a built-in handler or an unreadable file: assume torch
    assert _uses_torch(tmp_path, {"model": {"serializedFile": "m.pt"}}, "handler_6.py")
    assert _uses_torch(tmp_path, {}, "image_classifier")
    assert _uses_torch(tmp_path, {}, "missing.py")


def test_a_torch_free_worker_does_not_queue_behind_the_torch_import(tmp_path):
    """Workers here have no frontend to connect to and exit at once: only who started them
    (the fork server: a ForkedWorker, or a fresh interpreter) is checked."""
    settings = WorkerSettings(socket=str(tmp_path / "nobody.sock"), model_dir=str(tmp_path),
                              model_name="m", handler="handler.py")

    async def scenario() -> None:
        async with anyio.create_task_group() as group:
            tasks = TaskOwner(group)
            launcher = ForkServerLauncher(tasks, None)

            def launch(uses_torch: bool):
                return launcher.launch(settings, cwd=tmp_path, log_file=None,
                                       uses_torch=uses_torch)

            first = await launch(False)
            assert isinstance(first, ForkedWorker) and not launcher.torch_loaded
            torch_fork = asyncio.ensure_future(launch(True))
            await asyncio.sleep(0)  # its request is on its way: the fork server imports torch
            meanwhile = await launch(False)
            assert not isinstance(meanwhile, ForkedWorker)  # started on its own at once
            torch_worker = await asyncio.wait_for(torch_fork, 120)
            assert isinstance(torch_worker, ForkedWorker) and launcher.torch_loaded
            later = await launch(False)  # torch is there now: nothing to wait for
            assert isinstance(later, ForkedWorker)
            for handle in (first, meanwhile, torch_worker, later):
                assert await asyncio.wait_for(handle.wait(), 60) != 0
            await asyncio.wait_for(tasks.close(), 30)

    asyncio.run(scenario())
