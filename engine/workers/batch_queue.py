"""The queue in front of one model version's workers.

A batch leaves as soon as a worker is free: requests that arrive in the same event-loop tick
go together, and requests that arrive while every worker is busy are gathered, up to
``batch_size``, for the next free worker. ``max_batch_delay`` is therefore never a floor on
latency (a fixed wait would cost its full delay on every workflow hop at light load); it is
kept and reported for compatibility. A job cancelled while queued (a workflow node timeout)
is skipped; a result that arrives for a cancelled job is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from ..errors import ServiceUnavailableError
from . import protocol
from .process import Job, WorkerProcess


class BatchQueue:
    def __init__(self, model_name: str, batch_size: int, capacity: int):
        self.model_name = model_name
        self.batch_size = max(1, batch_size)
        self.capacity = capacity
        self._pending: deque[Job] = deque()
        self._idle: list[WorkerProcess] = []
        self._pump_scheduled = False
        self.queue_latency_s = 0.0  # summed over dispatched jobs, for metrics
        self.dispatched = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, request: protocol.Request) -> asyncio.Future:
        """Queue one request; the future resolves to its ``protocol.Response``."""
        if len(self._pending) >= self.capacity:
            raise ServiceUnavailableError(
                f"Job queue of model \"{self.model_name}\" is full ({self.capacity} requests); "
                "try again later or add workers")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(Job(request, future, time.perf_counter()))
        if self._idle and not self._pump_scheduled:
            self._pump_scheduled = True
            loop.call_soon(self._pump)
        return future

    def worker_ready(self, worker: WorkerProcess) -> None:
        """A worker is free (new, or done with its batch)."""
        self._idle.append(worker)
        if self._pending:
            self._pump()

    def worker_gone(self, worker: WorkerProcess) -> None:
        if worker in self._idle:
            self._idle.remove(worker)

    def fail_pending(self, error: Exception) -> None:
        """Nobody will serve what is queued (no worker left): answer it now."""
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(error)

    def _pump(self) -> None:
        self._pump_scheduled = False
        pending, idle = self._pending, self._idle
        now = time.perf_counter()
        while pending and idle:
            batch: list[Job] = []
            while pending and len(batch) < self.batch_size:
                job = pending.popleft()
                if not job.future.done():  # cancelled or timed out while queued
                    batch.append(job)
                    self.queue_latency_s += now - job.enqueued
            if not batch:
                return
            self.dispatched += len(batch)
            idle.pop().dispatch(batch)
