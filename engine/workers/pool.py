"""The workers of one model version: start them, keep ``min_workers`` of them alive
(restarting a dead one with backoff), scale up and down, stop them all.

Each worker gets one device (round-robin over visible GPUs, else CPU) and, on CPU, its share
of the cores as torch's thread count, so workers split the machine instead of fighting."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from pathlib import Path
from typing import Callable, Mapping, TextIO

from ..errors import ServiceUnavailableError
from ..tasks import TaskHandle, TaskOwner
from .batch_queue import BatchQueue
from .process import Launcher, WorkerProcess, WorkerSpec, WorkerStartError

log = logging.getLogger("dagserve.workers")

MAX_BACKOFF_S = 30.0


class DeviceAllocator:
    """Hands out GPU ids round-robin; ``None`` (CPU) when there is no GPU."""

    def __init__(self, gpu_count: int):
        self.gpu_count = gpu_count
        self._next = itertools.count()

    def next(self) -> int | None:
        return next(self._next) % self.gpu_count if self.gpu_count > 0 else None


def visible_gpu_count(configured: int | None,
                      environ: Mapping[str, str] | None = None,
                      driver_dir: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """GPUs the workers may use: ``number_of_gpu`` when configured, else the NVIDIA driver's
    GPUs (one folder each under ``driver_dir``), limited by ``CUDA_VISIBLE_DEVICES``.

    Read without importing torch: the frontend never needs it (importing it cost seconds of
    start-up and ~150 MiB), and CUDA must stay uninitialised in the processes that fork."""
    if configured is not None:
        return configured
    try:
        count = sum(1 for _ in driver_dir.iterdir())
    except OSError:
        return 0
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        if "-1" in ids:
            ids = ids[:ids.index("-1")]
        count = min(count, len(ids))
    return count


class WorkerPool:
    def __init__(self, spec: WorkerSpec, queue: BatchQueue, *, devices: DeviceAllocator,
                 sock_dir: Path, log_file: TextIO | None, tasks: TaskOwner, launcher: Launcher,
                 on_metrics: Callable[[list[dict]], None] | None = None,
                 worker_factory: Callable[..., WorkerProcess] = WorkerProcess):
        self.spec = spec
        self.tasks = tasks
        self.launcher = launcher
        self.worker_factory = worker_factory  # WorkerProcess, or a Ray actor's (ray_cluster)
        self.queue = queue
        self.devices = devices
        self.sock_dir = sock_dir
        self.log_file = log_file
        self.on_metrics = on_metrics
        self.workers: list[WorkerProcess] = []
        self.min_workers = 0
        self.max_workers = 0
        self._closed = False
        self._failures = 0
        self._failing_since: float | None = None  # first restart of the current streak
        self._restarts: set[TaskHandle] = set()
        self._retiring: dict[WorkerProcess, asyncio.Future] = {}

    @property
    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive]

    @property
    def ready_count(self) -> int:
        return sum(1 for w in self.workers if w.alive and w.status == "READY")

    def _threads(self) -> int:
        """torch threads of a CPU worker: its share of the cores, one core left to the
        frontend (on 2 cores, a worker with 2 spinning threads starved the event loop: the
        example CNN fell from 711 to 70 req/s)."""
        if self.devices.gpu_count:
            return 0
        return max(1, ((os.cpu_count() or 1) - 1) // max(1, self.min_workers))

    async def _start_one(self) -> WorkerProcess:
        worker = self.worker_factory(self.spec, sock_dir=self.sock_dir,
                                     gpu_id=self.devices.next(), threads=self._threads(),
                                     log_file=self.log_file, tasks=self.tasks,
                                     launcher=self.launcher, on_idle=self._worker_idle,
                                     on_exit=self._on_exit, on_metrics=self.on_metrics)
        self.workers.append(worker)
        try:
            await worker.start()
        except BaseException:
            if worker in self.workers:
                self.workers.remove(worker)
            raise
        if self._closed:
            await worker.stop()
            raise WorkerStartError("model was unregistered while its worker started")
        self._failures = 0
        self._failing_since = None
        self.queue.worker_ready(worker)
        return worker

    async def scale(self, min_workers: int, max_workers: int) -> None:
        """Start or stop workers until ``min_workers`` are live; raises WorkerStartError when
        one cannot start (those already started stay)."""
        self.min_workers, self.max_workers = min_workers, max_workers
        live = self.live_workers
        if len(live) > min_workers:
            extra = [w for w in live if not w.busy][: len(live) - min_workers]
            extra += [w for w in live if w.busy][: len(live) - min_workers - len(extra)]
            await asyncio.gather(*(self._retire(w) for w in extra))
        missing = min_workers - len(self.live_workers)
        if missing > 0:
            results = await asyncio.gather(*(self._start_one() for _ in range(missing)),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0] if isinstance(errors[0], WorkerStartError) else \
                    WorkerStartError(str(errors[0]))

    def _worker_idle(self, worker: WorkerProcess) -> None:
        waiter = self._retiring.get(worker)
        if self._closed:
            return  # draining for unregistration: no new batch
        if waiter is None:
            self.queue.worker_ready(worker)
        elif not waiter.done():
            waiter.set_result(None)

    async def _retire(self, worker: WorkerProcess) -> None:
        """Scale down gently: no new batch for this worker, let its current one finish
        (bounded by the response timeout), then stop it."""
        self.queue.worker_gone(worker)
        if worker.busy:
            waiter = asyncio.get_running_loop().create_future()
            self._retiring[worker] = waiter
            try:
                await asyncio.wait_for(waiter, self.spec.response_timeout)
            except TimeoutError:
                pass
            finally:
                self._retiring.pop(worker, None)
        await worker.stop()

    def _on_exit(self, worker: WorkerProcess, reason: str) -> None:
        self.queue.worker_gone(worker)
        waiter = self._retiring.get(worker)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if worker in self.workers:
            self.workers.remove(worker)
        if worker.status == "STOPPED" or self._closed:
            return
        log.warning("worker %s (pid %s) of %s exited: %s", worker.id, worker.pid,
                    self.spec.model_name, reason)
        if not self.live_workers and not self._restarts and self.min_workers == 0:
            self.queue.fail_pending(self.no_worker_error())
        if len(self.live_workers) + len(self._restarts) < self.min_workers:
            self._schedule_restart()

    def _schedule_restart(self) -> None:
        holder: list[TaskHandle] = []

        async def restart() -> None:
            try:
                await self._restart()
            finally:
                self._restarts.difference_update(holder)

        handle = self.tasks.spawn(restart, name=f"restart of a worker of {self.spec.model_name}")
        if not handle.finished:
            holder.append(handle)
            self._restarts.add(handle)

    async def _restart(self) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        delay = min(MAX_BACKOFF_S, 0.25 * (2 ** self._failures))
        self._failures += 1
        await asyncio.sleep(delay)
        if self._closed or len(self.live_workers) >= self.min_workers:
            return
        try:
            await self._start_one()
            log.info("restarted a worker of %s", self.spec.model_name)
        except WorkerStartError as exc:
            log.error("could not restart a worker of %s: %s", self.spec.model_name, exc)
            if not self.live_workers:
                self.queue.fail_pending(ServiceUnavailableError(
                    f"Model \"{self.spec.model_name}\" could not restart its worker: {exc}"))
            if self._retry_time_over():
                log.error("gave up restarting workers of %s after %g s (maxRetryTimeoutInSec)",
                          self.spec.model_name, self.spec.max_retry_timeout_s)
                if not self.live_workers:
                    self.queue.fail_pending(self.no_worker_error())
                return
            if not self._closed and len(self.live_workers) < self.min_workers:
                self._schedule_restart()

    def _retry_time_over(self) -> bool:
        return self._failing_since is not None and \
            time.monotonic() - self._failing_since >= self.spec.max_retry_timeout_s

    def abandon(self, future: asyncio.Future) -> None:
        """A caller gave up on the job of ``future`` (a node timeout): interrupt the batch
        running it if nobody else waits for that batch."""
        for worker in self.workers:
            worker.abandon(future)

    def no_worker_error(self) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"Model \"{self.spec.model_name}\" has no worker to serve inference request. "
            "Please use scale workers API to add workers.")

    def check_can_serve(self) -> None:
        """Refuse at once when no worker is live or coming back."""
        if not self.live_workers and not self._restarts:
            raise self.no_worker_error()

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop every worker; with ``grace_s`` (unregister_model_timeout) the batches they
        are running may finish first, for at most that long."""
        self._closed = True
        for handle in list(self._restarts):
            handle.cancel()
        workers = list(self.workers)
        if grace_s > 0:
            for worker in workers:
                self.queue.worker_gone(worker)
            deadline = time.monotonic() + grace_s
            while any(w.busy and w.alive for w in workers) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        self.queue.fail_pending(ServiceUnavailableError(
            f"Model \"{self.spec.model_name}\" was unregistered"))
