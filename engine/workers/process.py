"""One worker process: spawn it, wait for its ``ready`` frame, send it batches, collect
results, and notice at once when it dies or passes its response timeout.

A worker that dies fails the requests it held with a 5xx right away (never a hang); the pool
decides whether to start another.

A worker may hold batches behind the one it is running (the queue sends them: see
``BatchQueue``); it reads the next from its socket the moment it is done, instead of waiting
a round trip through the frontend. It holds one such batch, and up to ``MAX_HELD`` while its
batches are so quick that all of them would start within ``HOLD_BUDGET_S`` (judged from a
moving average of its batch times): a fast model keeps its worker busy, a slow one never
has requests waiting behind it that another worker could take sooner. Only the running
batch counts as started: its response timeout starts when the one before it finishes, and
batches the worker never started are handed back to the queue (``on_unstarted``) when it
dies or times out, to be served by another worker instead of failing with it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from ..errors import WorkerError
from . import protocol
from ..tasks import TaskOwner
from .connection import WorkerConnection
from .launch import ForkServerLauncher, SubprocessLauncher, WorkerHandle
from .settings import WorkerSettings

log = logging.getLogger("dagserve.workers")

_ids = itertools.count(9000)

MAX_HELD = 3  # batches a worker may hold behind the running one
HOLD_BUDGET_S = 0.001  # ... as long as they would all start within about this long


@dataclass
class WorkerSpec:
    """What the workers of one model version need: how the frontend treats them (timeouts)
    and what each is told (:meth:`settings_for`)."""

    model_name: str
    model_dir: Path
    handler: str
    batch_size: int = 1
    response_timeout: float = 120.0
    startup_timeout: float = 120.0
    decode_input: bool = True
    config_file: str | None = None
    server_version: str = ""
    uses_torch: bool = True  # a hint for the launcher: a serialized model or a built-in handler

    def settings_for(self, socket: Path, gpu_id: int | None, threads: int) -> WorkerSettings:
        return WorkerSettings(
            socket=str(socket), model_dir=str(self.model_dir), model_name=self.model_name,
            handler=self.handler, gpu_id=gpu_id, batch_size=self.batch_size, threads=threads,
            decode_input=self.decode_input, server_version=self.server_version,
            config_file=self.config_file)


@dataclass(slots=True)
class Job:
    request: protocol.Request
    future: asyncio.Future
    enqueued: float


Launcher = ForkServerLauncher | SubprocessLauncher


class WorkerStartError(Exception):
    """The worker could not load its handler (or did not say so in time)."""


class WorkerProcess:
    node_id: str | None = None  # the Ray node of a Ray worker (ray_worker.py); None: here

    def __init__(self, spec: WorkerSpec, *, sock_dir: Path, gpu_id: int | None, threads: int,
                 log_file: TextIO | None, tasks: TaskOwner, launcher: Launcher,
                 on_idle: Callable[["WorkerProcess"], None],
                 on_exit: Callable[["WorkerProcess", str], None],
                 on_metrics: Callable[[list[dict]], None] | None = None):
        self.spec = spec
        self._tasks = tasks
        self._launcher = launcher
        self.id = str(next(_ids))
        self.gpu_id = gpu_id
        self.threads = threads
        self.status = "STARTING"
        self.start_time = time.time()
        self.pid: int | None = None
        self._sock_path = sock_dir / f"w{self.id}.sock"
        self._log_file = log_file
        self._on_idle = on_idle
        self._on_exit = on_exit
        self._on_metrics = on_metrics
        self._proc: WorkerHandle | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conn: WorkerConnection | None = None
        self._ready: asyncio.Future | None = None
        self._exited: asyncio.Future | None = None  # set by the exit watcher
        self._inflight: list[Job] = []  # the batch the worker is running
        self._held: deque[list[Job]] = deque()  # batches waiting behind it in the socket
        self._started = 0.0  # when the running batch started
        self._batch_s = HOLD_BUDGET_S  # moving average of how long a batch takes
        # Set by the queue that feeds this worker: a batch finished and another is still
        # running (room for one more); batches never started when the worker went away.
        self.on_room: Callable[[WorkerProcess], None] | None = None
        self.on_unstarted: Callable[[WorkerProcess, list[Job]], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._dead = False
        self._stopping = False

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._exited = loop.create_future()
        conn_made = loop.create_future()

        def factory() -> WorkerConnection:
            conn = WorkerConnection(self._on_frame, self._on_conn_lost)
            self._conn = conn
            if not conn_made.done():
                conn_made.set_result(conn)
            return conn

        self._server = await loop.create_unix_server(factory, path=str(self._sock_path))
        os.chmod(self._sock_path, 0o600)
        settings = self.spec.settings_for(self._sock_path, self.gpu_id, self.threads)
        self._proc = await self._launcher.launch(settings, cwd=self.spec.model_dir,
                                                 log_file=self._log_file,
                                                 uses_torch=self.spec.uses_torch)
        self.pid = self._proc.pid
        self._tasks.spawn(self._watch_exit, name=f"exit watcher of worker {self.id}")
        try:
            async with asyncio.timeout(self.spec.startup_timeout):
                done, _ = await asyncio.wait({self._ready, self._exited},
                                             return_when=asyncio.FIRST_COMPLETED)
            if self._ready.done():
                self._ready.result()  # raises WorkerStartError on load_failed
            else:
                raise WorkerStartError(f"worker exited with code {self._proc.returncode} "
                                       "before it loaded the model")
        except TimeoutError:
            self.kill()
            raise WorkerStartError(f"worker did not load the model within "
                                   f"{self.spec.startup_timeout:g} s") from None
        except BaseException:
            self.kill()
            raise
        finally:
            self._server.close()
            try:
                self._sock_path.unlink()
            except FileNotFoundError:
                pass
        self.status = "READY"
        self.start_time = time.time()

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(code)
        self._die(f"Worker died (exit code {code}).")

    def kill(self) -> None:
        """Kill the process (and anything it started); used on timeout and shutdown."""
        if self._proc is not None and self._proc.returncode is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    async def stop(self) -> None:
        """Stop on purpose: close the socket (the worker exits on EOF), kill if it lingers."""
        self._stopping = True
        self.status = "UNLOADING"
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                self.kill()
                await self._proc.wait()
        self._die("Worker stopped.")

    @property
    def alive(self) -> bool:
        return not self._dead

    @property
    def busy(self) -> bool:
        return bool(self._inflight)

    def can_take_batch(self) -> bool:
        """Idle, or quick enough to hold one more batch (see the module docstring)."""
        held = len(self._held)
        if not self._inflight or held == 0:
            return True
        return held < MAX_HELD and (held + 1) * self._batch_s <= HOLD_BUDGET_S

    # -- batches ------------------------------------------------------------------------

    def dispatch(self, jobs: list[Job]) -> None:
        """Send a batch: the one to run now, or (while one runs) the one to run next."""
        assert jobs
        if self._inflight:
            self._held.append(jobs)
        else:
            self._inflight = jobs
            self._start_batch(time.perf_counter())
        self._send(jobs)

    def _send(self, jobs: list[Job]) -> None:
        """One ``predict`` frame down the socket (a Ray worker makes it a Ray call)."""
        assert self._conn is not None
        try:
            self._conn.send(protocol.encode_predict([j.request for j in jobs]))
        except ConnectionError:
            self._die("Worker connection closed.")

    def _start_batch(self, now: float) -> None:
        self._started = now
        timeout = self.spec.response_timeout
        if timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        log.warning("worker %s of %s passed its response timeout (%g s); killing it",
                    self.id, self.spec.model_name, self.spec.response_timeout)
        self._fail_inflight(WorkerError(
            f"Worker timed out after {self.spec.response_timeout:g} s", 504))
        self.kill()

    # -- frames from the worker ---------------------------------------------------------

    def _on_frame(self, meta: dict, body: bytes) -> None:
        op = meta.get("op")
        if op == "result":
            self._on_result(meta, body)
        elif op == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif op == "load_failed":
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(WorkerStartError(meta.get("message", "load failed")))
        else:
            log.warning("worker %s sent an unknown frame %r", self.id, op)

    def _on_result(self, meta: dict, body: bytes) -> None:
        if not self._inflight:
            return  # the late result of a batch that timed out (the worker is being killed)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        jobs = self._inflight
        now = time.perf_counter()
        self._batch_s += 0.2 * (now - self._started - self._batch_s)
        if self._held:  # the worker has started the batch behind this one
            self._inflight = self._held.popleft()
            self._start_batch(now)
        else:
            self._inflight = []
        responses = protocol.decode_result(meta, body)
        for job, resp in zip(jobs, responses):
            if not job.future.done():
                job.future.set_result(resp)
        for job in jobs[len(responses):]:
            if not job.future.done():
                job.future.set_exception(WorkerError("number of batch response mismatched", 503))
        metrics = meta.get("metrics")
        if metrics and self._on_metrics is not None:
            self._on_metrics(metrics)
        if self._dead:
            return
        if not self._inflight:
            self._on_idle(self)
        elif self.on_room is not None:
            self.on_room(self)

    def _on_conn_lost(self, exc: Exception | None) -> None:
        if self._ready is not None and not self._ready.done():
            return  # start() reports it
        self._die("Worker died." if exc is None else f"Worker connection failed: {exc}")

    # -- death --------------------------------------------------------------------------

    def _fail_inflight(self, error: Exception) -> None:
        """Fail the running batch; hand those behind it (never started) back."""
        jobs, self._inflight = self._inflight, []
        unstarted = [job for batch in self._held for job in batch]
        self._held.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)
        if unstarted:
            if self.on_unstarted is not None:
                self.on_unstarted(self, unstarted)
            else:
                for job in unstarted:
                    if not job.future.done():
                        job.future.set_exception(error)

    def _die(self, reason: str) -> None:
        if self._dead:
            return
        self._dead = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.status = "STOPPED" if self._stopping else "DEAD"
        self._fail_inflight(WorkerError(reason, 500))
        if self._conn is not None:
            self._conn.close()
        self.kill()
        self._on_exit(self, reason)
