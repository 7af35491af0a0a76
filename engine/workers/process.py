"""One worker process: spawn it, wait for its ``ready`` frame, send it batches, collect
results, and notice at once when it dies or passes its response timeout.

A dead worker fails the requests it held with a 5xx at once; its pool may start another.

A worker may hold batches behind the one it is running (the queue sends them: see
``BatchQueue``); it reads the next from its socket the moment it is done, instead of waiting
a round trip through the frontend. It holds one such batch, and up to ``MAX_HELD`` while its
batches are so quick that all of them would start within ``HOLD_BUDGET_S`` (judged from a
moving average of its batch times): a fast model keeps its worker busy, a slow one never
has requests waiting behind it that another worker could take sooner. Only the running
batch counts as started: its response timeout starts when the one before it finishes, and
batches the worker never started are handed back to the queue (``on_unstarted``) when it
dies or times out, to be served by another worker instead of failing with it.

Which batches a worker started is known only from what it sent before its socket closed: a
worker that passes its response timeout is killed, and its results already on the way are
still read (each one means it started the batch behind), so a batch it may have started is
failed with a 5xx, never handed to another worker to run a second time.

A batch nobody waits for any more (every job in it cancelled: a workflow node's timeout) is
interrupted (``abandon``): the worker gets ``SIGUSR1``, stops the batch and answers
``interrupted`` (see ``interrupt.py``); a worker that does not within ``INTERRUPT_GRACE_S``
is killed and replaced by its pool. Either way the worker is free for the next request.

The worker connects to the frontend's Unix socket (abstract on Linux: endpoint.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from collections import deque
from pathlib import Path
from typing import Callable, TextIO

from ..errors import WorkerError
from ..tasks import TaskOwner
from . import protocol
from .connection import WorkerConnection
from .endpoint import after_listening, peer_is_own_user, remove, worker_address
from .interrupt import INTERRUPT_SIGNAL
from .launch import ForkServerLauncher, SubprocessLauncher, WorkerHandle
from .spec import Job, WorkerSpec, WorkerStartError  # noqa: F401 - also imported from here
from .streaming_jobs import StreamingJobs, wanted

log = logging.getLogger("dagserve.workers")

_ids = itertools.count(9000)

MAX_HELD = 3  # batches a worker may hold behind the running one
HOLD_BUDGET_S = 0.001  # ... as long as they would all start within about this long
INTERRUPT_GRACE_S = 2.0  # an interrupted worker that is still busy after this is replaced
EXIT_DRAIN_S = 1.0  # after the process exits, wait this long for its last frames

Launcher = ForkServerLauncher | SubprocessLauncher


class WorkerProcess(StreamingJobs):
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
        self._address = worker_address(sock_dir, self.id)
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
        self.held_jobs = 0  # the jobs in those batches (they count as queued)
        self._started = 0.0  # when the running batch started
        self._batch_s = HOLD_BUDGET_S  # moving average of how long a batch takes
        # Set by the queue that feeds this worker: a batch finished and another is still
        # running (room for one more); batches never started when the worker went away.
        self.on_room: Callable[[WorkerProcess], None] | None = None
        self.on_unstarted: Callable[[WorkerProcess, list[Job]], None] | None = None
        # ... jobs of an interrupted batch still wanted (first in line again); and "send this
        # worker nothing more" (it timed out and is being killed).
        self.on_requeue: Callable[[list[Job]], None] | None = None
        self.on_gone: Callable[[WorkerProcess], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._grace: asyncio.TimerHandle | None = None  # an interrupt sent, not yet answered
        self._batch_no = 0  # counts started batches: which one an interrupt was meant for
        self._lost: asyncio.Future | None = None  # the socket closed (all frames read)
        self._timed_out = False
        self._dead = False
        self._stopping = False

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._exited = loop.create_future()
        self._lost = loop.create_future()

        def factory() -> WorkerConnection:
            return WorkerConnection(self._on_frame, self._on_conn_lost, accept=self._adopt)

        self._server = await loop.create_unix_server(factory, path=self._address)
        after_listening(self._address)
        settings = self.spec.settings_for(self._address, self.gpu_id, self.threads)
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
            await self._abort_start()
            raise WorkerStartError(f"worker did not load the model within "
                                   f"{self.spec.startup_timeout:g} s") from None
        except BaseException as exc:
            await self._abort_start(wait=not isinstance(exc, asyncio.CancelledError))
            raise
        finally:
            self._server.close()  # one connection per worker: no more
            remove(self._address)
        self.status = "READY"
        self.start_time = time.time()

    def _adopt(self, conn: WorkerConnection) -> bool:
        """Take the first connection from a process of our own user as the worker's."""
        if self._conn is not None or not peer_is_own_user(conn.transport):
            log.warning("worker %s of %s: refused a connection that is not its worker",
                        self.id, self.spec.model_name)
            return False
        self._conn = conn
        return True

    async def _abort_start(self, wait: bool = True) -> None:
        """Kill a worker that did not start; with ``wait``, return once it is gone (bounded)."""
        self.kill()
        if self._conn is not None:
            self._conn.close()
        if wait and self._exited is not None:
            await asyncio.wait({self._exited}, timeout=5)

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(code)
        if self._lost is not None and not self._lost.done():
            # read what the worker sent before it died first: each result says which batch
            # it had started (a child that inherited the socket may keep it open: bounded)
            try:
                await asyncio.wait_for(asyncio.shield(self._lost), EXIT_DRAIN_S)
            except TimeoutError:
                pass
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
            self.held_jobs += len(jobs)
        else:
            self._inflight = jobs
            self._start_batch(time.perf_counter())
        self._send(jobs)

    def _send(self, jobs: list[Job]) -> None:  # ray_worker.py: a Ray call instead
        try:
            self._conn.send(protocol.encode_predict([j.request for j in jobs]))
        except ConnectionError:
            self._die("Worker connection closed.")

    def _start_batch(self, now: float) -> None:
        self._started = now
        self._batch_no += 1
        timeout = self.spec.response_timeout
        if timeout > 0 and not self._timed_out:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._on_timeout)

    def _on_timeout(self) -> None:
        """The running batch passed the response timeout: fail it and kill the worker. The
        batches behind it stay until the socket closes: a result still on its way means the
        worker started the next one (see ``_die``)."""
        self._timer = None
        log.warning("worker %s of %s passed its response timeout (%g s); killing it",
                    self.id, self.spec.model_name, self.spec.response_timeout)
        self._timed_out = True
        error = WorkerError(f"Worker timed out after {self.spec.response_timeout:g} s", 504)
        for job in self._inflight:
            if not job.future.done():
                job.future.set_exception(error)
            elif job.stream is not None:
                job.stream.fail(error)
        if self.on_gone is not None:
            self.on_gone(self)
        self.kill()

    # -- abandoned batches --------------------------------------------------------------

    def abandon(self, future: asyncio.Future) -> None:
        """``future``'s waiter gave up on it (it is done: cancelled). If it belongs to the
        running batch and no job of that batch is wanted any more, interrupt the batch."""
        jobs = self._inflight
        if jobs and any(job.future is future for job in jobs):
            self._interrupt_if_unwanted()

    def _interrupt(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        try:
            os.kill(self._proc.pid, INTERRUPT_SIGNAL)
        except ProcessLookupError:
            return
        self._grace = asyncio.get_running_loop().call_later(
            INTERRUPT_GRACE_S, self._on_grace_over, self._batch_no)

    def _on_grace_over(self, batch_no: int) -> None:
        self._grace = None
        if batch_no == self._batch_no and self._inflight and not self._dead:
            log.warning("worker %s of %s did not stop an abandoned batch within %g s; "
                        "replacing it", self.id, self.spec.model_name, INTERRUPT_GRACE_S)
            self._die("Worker was replaced: it did not stop a batch whose requests timed out.")

    # -- frames from the worker ---------------------------------------------------------

    def _on_frame(self, meta: dict, body: bytes) -> None:
        op = meta.get("op")
        if op == "result":
            self._on_result(meta, body)
        elif op == "interrupted":
            self._on_interrupted()
        elif op == "partial":
            self._on_partial(meta, body)
        elif op == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif op == "load_failed":
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(WorkerStartError(meta.get("message", "load failed")))
        else:
            log.warning("worker %s sent an unknown frame %r", self.id, op)

    def _finish_running(self) -> list[Job]:
        """The running batch is over (answered or interrupted): the worker has started the
        one it held behind it, if any. Returns the finished batch's jobs."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        jobs = self._inflight
        now = time.perf_counter()
        self._batch_s += 0.2 * (now - self._started - self._batch_s)
        if self._held:  # the worker has started the batch behind this one
            self._inflight = self._held.popleft()
            self.held_jobs -= len(self._inflight)
            self._start_batch(now)
            if not any(wanted(job) for job in self._inflight) and not self._timed_out:
                self._interrupt()  # nobody waits for it any more
        else:
            self._inflight = []
        return jobs

    def _next(self) -> None:
        """Tell the queue what this worker can take now."""
        if self._dead or self._timed_out:
            return
        if not self._inflight:
            self._on_idle(self)
        elif self.on_room is not None:
            self.on_room(self)

    def _on_interrupted(self) -> None:
        if not self._inflight:
            return
        jobs = self._finish_running()
        for job in jobs:  # (streams of an interrupted batch had no client left)
            if job.stream is not None:
                job.stream.fail(WorkerError("Worker interrupted the batch", 503))
        live = [job for job in jobs if not job.future.done()]
        if live:  # a result still wanted: the batch runs again, on this or another worker
            if self.on_requeue is not None:
                self.on_requeue(live)
            else:
                for job in live:
                    job.future.set_exception(WorkerError("Worker interrupted the batch", 503))
        self._next()

    def _on_result(self, meta: dict, body: bytes) -> None:
        if not self._inflight:
            return  # a result after the worker was declared dead
        jobs = self._finish_running()
        responses = protocol.decode_result(meta, body)
        for job, resp in zip(jobs, responses):
            if not job.future.done():
                job.future.set_result(resp)
            elif job.stream is not None:
                job.stream.finish(resp)
        for job in jobs[len(responses):]:
            error = WorkerError("number of batch response mismatched", 503)
            if not job.future.done():
                job.future.set_exception(error)
            elif job.stream is not None:
                job.stream.fail(error)
        metrics = meta.get("metrics")
        if metrics and self._on_metrics is not None:
            try:
                self._on_metrics(metrics)
            except Exception:  # metrics must never cost a worker its connection
                log.exception("worker %s of %s: could not record its metrics", self.id,
                              self.spec.model_name)
        self._next()

    def _on_conn_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._ready is not None and not self._ready.done():
            return  # start() reports it
        self._die("Worker died." if exc is None else f"Worker connection failed: {exc}")

    # -- death --------------------------------------------------------------------------

    def _fail_inflight(self, error: Exception) -> None:
        """Fail the running batch (started); hand those behind it (never started) back."""
        jobs, self._inflight = self._inflight, []
        unstarted = [job for batch in self._held for job in batch]
        self._held.clear()
        self.held_jobs = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)
            elif job.stream is not None:
                job.stream.fail(error)
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
        for timer in (self._timer, self._grace):
            if timer is not None:
                timer.cancel()
        self._timer = self._grace = None
        self.status = "STOPPED" if self._stopping else "DEAD"
        self._fail_inflight(WorkerError(reason, 500))
        if self._conn is not None:
            self._conn.close()
        self.kill()
        self._on_exit(self, reason)

