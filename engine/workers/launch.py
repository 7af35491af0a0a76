"""Starting a worker process: forked from the fork server (engine/workers/zygote.py), so it
shares torch's pages with every other worker, or spawned as a fresh interpreter when the
fork server is off (``worker_fork_server=false``) or not available.

Either way the caller gets a process handle with ``pid``, ``returncode`` and ``wait()``; the
worker runs in a session of its own (``os.killpg`` stops it and whatever it started), with
its working directory in the model's folder and its output in the model log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Mapping, Protocol, TextIO

from ..tasks import TaskOwner
from .settings import WorkerSettings

log = logging.getLogger("dagserve.workers")

WORKER_MODULE = "dagserve.engine.workers.main"
ZYGOTE_MODULE = "dagserve.engine.workers.zygote"
_POLL_S = 0.1
# ``import torch``, ``from torch.nn import ...``, ``import os, torchvision as tv``: a line of
# its own (indented ones too) that imports torch or a torch* package (which imports torch)
_IMPORTS_TORCH = re.compile(
    rb"^[ \t]*(?:from[ \t]+torch\w*\b|import[ \t]+(?:[\w.]+(?:[ \t]+as[ \t]+\w+)?[ \t]*,[ \t]*)*"
    rb"torch\w*\b)", re.MULTILINE)


def imports_torch(source: Path) -> bool:
    """Whether a handler's source file imports torch itself (a hint for the launcher: a
    module it imports that imports torch is not seen). Raises OSError if unreadable."""
    return _IMPORTS_TORCH.search(source.read_bytes()) is not None


class WorkerHandle(Protocol):
    pid: int

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


class SubprocessLauncher:
    """A fresh ``python -P -m dagserve.engine.workers.main`` per worker; ``base_env``
    (default: the server's environment) is what it starts with."""

    def __init__(self, base_env: dict[str, str] | None = None):
        self._base_env = base_env

    async def launch(self, settings: WorkerSettings, *, cwd: Path, log_file: TextIO | None,
                     env: dict[str, str] | None = None, uses_torch: bool = True) -> WorkerHandle:
        out = log_file if log_file is not None else asyncio.subprocess.DEVNULL
        return await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", WORKER_MODULE, "--settings", settings.to_json(),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, cwd=str(cwd),
            start_new_session=True, env={**self._base(), **(env or {})})

    def _base(self) -> Mapping[str, str]:
        return os.environ if self._base_env is None else self._base_env


class ForkedWorker:
    """A worker forked by the fork server; its exit code arrives over the control socket
    (or, when the fork server itself is gone, is noticed by polling the pid)."""

    def __init__(self, pid: int, server: "ForkServerLauncher"):
        self.pid = pid
        self._server = server
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    def exited(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    async def wait(self) -> int:
        while not self._exit.done():
            if not self._server.alive:  # nobody reports the exit any more: poll
                if not _running(self.pid):
                    self.exited(-1)
                    break
                await asyncio.sleep(_POLL_S)
                continue
            try:
                await asyncio.wait_for(asyncio.shield(self._exit), 1.0)
            except TimeoutError:
                pass
        return self._exit.result()


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class ForkServerLauncher:
    """Runs the fork server as a task of ``tasks`` and forks workers from it; falls back to
    ``fallback`` when the fork server could not start."""

    def __init__(self, tasks: TaskOwner, log_file: TextIO | None,
                 fallback: SubprocessLauncher | None = None,
                 env: dict[str, str] | None = None):
        self._tasks = tasks
        self._log_file = log_file
        self._env = env  # the fork server's (and so every worker's) environment
        self._fallback = fallback or SubprocessLauncher(env)
        self._ready: asyncio.Future[bool] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[ForkedWorker]] = {}
        self._workers: dict[int, ForkedWorker] = {}
        self._next_id = 0
        self._torch_forks = 0  # forks asked for with "torch": true, not answered yet
        self.pid: int | None = None
        self.alive = False
        self.torch_loaded = False  # whether the fork server has imported torch

    def start(self) -> None:
        """Start the fork server in the background (it is ready in a fraction of a second;
        torch is imported there later, for the first worker that uses it)."""
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._tasks.spawn(self._run, name="the worker fork server")

    async def launch(self, settings: WorkerSettings, *, cwd: Path, log_file: TextIO | None,
                     env: dict[str, str] | None = None, uses_torch: bool = True) -> WorkerHandle:
        """Fork the worker; ``uses_torch`` has the fork server import torch first (once). A
        worker that will not need torch does not queue behind that import (seconds): while
        it runs, such a worker starts on its own at once instead."""
        self.start()
        assert self._ready is not None
        if not await asyncio.shield(self._ready) or not self.alive or self._writer is None \
                or (not uses_torch and self._torch_forks and not self.torch_loaded):
            return await self._fallback.launch(settings, cwd=cwd, log_file=log_file, env=env)
        self._next_id += 1
        request_id = self._next_id
        reply: asyncio.Future[ForkedWorker] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply
        log_path = getattr(log_file, "name", None) if log_file is not None else None
        message = {"op": "fork", "id": request_id, "settings": settings.to_json(),
                   "cwd": str(cwd), "log": log_path if isinstance(log_path, str) else None,
                   "env": env or {}, "torch": uses_torch}
        self._torch_forks += uses_torch
        try:
            self._writer.write(json.dumps(message).encode() + b"\n")
            return await reply
        except (ConnectionError, OSError) as exc:
            log.warning("fork server failed (%s); starting the worker on its own", exc)
            return await self._fallback.launch(settings, cwd=cwd, log_file=log_file, env=env)
        finally:
            self._torch_forks -= uses_torch
            self._pending.pop(request_id, None)

    async def _run(self) -> None:
        assert self._ready is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out = self._log_file if self._log_file is not None else asyncio.subprocess.DEVNULL
        proc = None
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-m", ZYGOTE_MODULE, "--fd", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=out, start_new_session=True, env=self._env)
            theirs.close()
            self.pid = proc.pid
            reader, self._writer = await asyncio.open_unix_connection(sock=ours)
            await self._serve(reader)
        except (OSError, ValueError) as exc:
            log.error("the worker fork server stopped: %s; workers start on their own", exc)
        finally:
            self.alive = False
            if not self._ready.done():
                self._ready.set_result(False)
            for reply in self._pending.values():
                if not reply.done():
                    reply.set_exception(ConnectionError("the fork server stopped"))
            if self._writer is not None:
                self._writer.close()
            ours.close()
            if proc is not None and proc.returncode is None:
                proc.kill()
                await asyncio.shield(proc.wait())

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        assert self._ready is not None
        while line := await reader.readline():
            message = json.loads(line)
            op = message.get("op")
            self.torch_loaded = bool(message.get("torch", self.torch_loaded))
            if op == "ready":
                self.alive = True
                self._ready.set_result(True)
            elif op in ("forked", "error"):
                reply = self._pending.get(message.get("id"))
                if op == "forked":  # registered now: its exit may be the next message
                    worker = ForkedWorker(int(message["pid"]), self)
                    self._workers[worker.pid] = worker
                    if reply is not None and not reply.done():
                        reply.set_result(worker)
                elif reply is not None and not reply.done():
                    reply.set_exception(OSError(message.get("message", "fork failed")))
            elif op == "exit":
                worker = self._workers.pop(int(message["pid"]), None)
                if worker is not None:
                    worker.exited(int(message["code"]))
        log.warning("the worker fork server exited; workers start on their own from now on")
