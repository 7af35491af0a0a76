"""The queue in front of one model version's workers.

A batch leaves as soon as a worker is free: requests that arrive in the same event-loop tick
go together, and requests that arrive while every worker is busy are gathered, up to
``batch_size``, for the next free worker. ``max_batch_delay`` is what TorchServe users expect
under load: when the last batch left full (demand exceeds what one batch carries), a partial
batch waits for a free worker up to ``max_batch_delay`` ms after its oldest request arrived,
leaving the moment it is full. At light load (the last batch was not full) nothing waits: a
fixed wait would cost its full delay on every workflow hop. A job cancelled while queued (a
workflow node timeout) is skipped; a result that arrives for a cancelled job is dropped.

A busy worker may also be given batches to hold behind the one it runs (one, or a few when
its batches are very quick: ``WorkerProcess.can_take_batch``), but only full ones
(``batch_size`` requests; with ``batch_size`` 1 every batch is full): it starts them the
moment it is done, instead of idling for a round trip through the frontend, while a
partial batch keeps gathering in the queue until a worker is free. At light load nothing
changes (a request goes to an idle worker at once); under load workers never wait for the
frontend, which more than doubles what one worker serves when the model is fast. An idle
worker is always preferred.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import deque

from ..errors import ServiceUnavailableError
from ..histogram import BATCH_BUCKETS, Histogram
from . import protocol
from .process import Job, WorkerProcess


class BatchQueue:
    def __init__(self, model_name: str, batch_size: int, capacity: int,
                 max_batch_delay_ms: float = 0.0):
        self.model_name = model_name
        self.batch_size = max(1, batch_size)
        self.capacity = capacity
        self.max_batch_delay_s = max(0.0, max_batch_delay_ms) / 1000.0
        self._last_full = False  # the last batch carried batch_size jobs: load is high
        self._fill_timer: asyncio.TimerHandle | None = None
        self._pending: deque[Job] = deque()
        self._idle: list[WorkerProcess] = []  # workers with nothing to do
        self._room: list[WorkerProcess] = []  # busy workers that may take another batch
        self._fed: set[WorkerProcess] = set()  # every worker this queue sends batches to
        self._pump_scheduled = False
        self.queue_latency_s = 0.0  # summed over dispatched jobs, for metrics
        self.dispatched = 0
        self.queue_wait = Histogram()  # seconds, per dispatched job; its sum: queue_latency_s
        self.batch_sizes = Histogram(BATCH_BUCKETS)  # per dispatched batch

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def waiting(self) -> int:
        """Requests not started yet: queued here, or held by a busy worker."""
        return len(self._pending) + sum(w.held_jobs for w in self._fed)

    def submit(self, request: protocol.Request, probe=None) -> asyncio.Future:
        """Queue one request; the future resolves to its ``protocol.Response``. At most
        ``capacity`` requests wait (``job_queue_size``); those running do not count.
        ``probe`` (a ``tracing.Attempt`` of a traced request) is told its queue wait, batch
        size, worker and handler time."""
        if self.waiting >= self.capacity:
            raise ServiceUnavailableError(
                f"Job queue of model \"{self.model_name}\" is full ({self.capacity} requests); "
                "try again later or add workers")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = self._pending
        pending.append(Job(request, future, time.perf_counter(), probe=probe))
        if (self._idle or (self._room and len(pending) >= self.batch_size)) \
                and not self._pump_scheduled:
            self._pump_scheduled = True
            loop.call_soon(self._pump)
        return future

    def worker_ready(self, worker: WorkerProcess) -> None:
        """A worker is free (new, or done with all it held)."""
        worker.on_room = self._worker_has_room
        worker.on_unstarted = self._requeue
        worker.on_requeue = self.requeue
        worker.on_gone = self.worker_gone
        self._fed.add(worker)
        if worker in self._room:
            self._room.remove(worker)
        self._idle.append(worker)
        if self._pending:
            self._pump()

    def worker_gone(self, worker: WorkerProcess) -> None:
        """Send this worker nothing more (it is stopping, or dead)."""
        worker.on_room = None
        self._fed.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        if worker in self._room:
            self._room.remove(worker)

    def _worker_has_room(self, worker: WorkerProcess) -> None:
        """A worker finished a batch and runs one it held: it may take another."""
        if worker not in self._room and worker.can_take_batch():
            self._room.append(worker)
        if len(self._pending) >= self.batch_size:
            self._pump()

    def _requeue(self, worker: WorkerProcess, jobs: list[Job]) -> None:
        """Jobs a worker held but never started (it died or timed out): first in line."""
        self.worker_gone(worker)
        self.requeue(jobs)

    def requeue(self, jobs: list[Job]) -> None:
        """Jobs to run again before anything else (a worker gave them back)."""
        for job in reversed(jobs):
            if not job.future.done():
                self._pending.appendleft(job)
        if self._pending and (self._idle or self._room) and not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def fail_pending(self, error: Exception) -> None:
        """Nobody will serve what is queued (no worker left): answer it now."""
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(error)

    def _wait_to_fill(self, now: float) -> bool:
        """Under load, hold a partial batch (see the module docstring); True while holding."""
        if not self._last_full or self.max_batch_delay_s <= 0:
            return False
        remaining = self._pending[0].enqueued + self.max_batch_delay_s - now
        if remaining <= 0:
            return False
        if self._fill_timer is None:
            self._fill_timer = asyncio.get_running_loop().call_later(remaining, self._filled)
        return True

    def _filled(self) -> None:
        """The oldest waiting request has waited ``max_batch_delay``: send what there is."""
        self._fill_timer = None
        self._last_full = False
        if self._pending:
            self._pump()

    def _pump(self) -> None:
        self._pump_scheduled = False
        pending, idle, room = self._pending, self._idle, self._room
        now = time.perf_counter()
        size = self.batch_size
        wait_counts, wait_bounds = self.queue_wait.counts, self.queue_wait.bounds
        while pending and (idle or (room and len(pending) >= size)):
            if len(pending) < size and self._wait_to_fill(now):
                return
            batch: list[Job] = []
            traced = False
            while pending and len(batch) < size:
                job = pending.popleft()
                if not job.future.done():  # cancelled or timed out while queued
                    batch.append(job)
                    wait = now - job.enqueued
                    self.queue_latency_s += wait
                    wait_counts[bisect_left(wait_bounds, wait)] += 1
                    traced = traced or job.probe is not None
            if not batch:
                return
            self._last_full = len(batch) == size
            if self._fill_timer is not None:
                self._fill_timer.cancel()
                self._fill_timer = None
            self.dispatched += len(batch)
            self.batch_sizes.observe(len(batch))
            worker = idle.pop() if idle else room.pop()
            if traced:
                for job in batch:
                    if job.probe is not None:
                        job.probe.dispatched(now - job.enqueued, len(batch), worker.id)
            worker.dispatch(batch)
            if worker.alive and worker.can_take_batch():
                room.append(worker)
