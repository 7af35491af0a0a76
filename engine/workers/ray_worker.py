"""One worker of a model version running as a Ray actor (``ray_actor.ModelActor``) on a
cluster node, seen by the pool and the batch queue exactly like a local ``WorkerProcess``:
``start``/``stop``/``kill``, ``dispatch`` a batch, ``alive``/``busy``/``can_take_batch``,
the ``on_idle``/``on_exit``/``on_metrics`` callbacks and the queue's ``on_room`` and
``on_unstarted`` hooks.

One batch is one Ray call (a Ray actor call costs about ten times a Unix-socket hop, so
never one per request). Calls queue on the actor in order, as frames queue in a local
worker's socket: the first not yet answered is the running one, whose response timeout
runs; those behind it are held and handed back to the queue if the actor dies.

The actor's death (its process killed, its node gone) is seen at once through its
``watch`` call, even when it is idle: its running batch fails with a 500, the pool starts
a replacement with backoff. A response timeout fails the running batch with a 504 and
kills the actor, as for a local worker."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import time
from collections import deque
from typing import Any, Callable

from ..errors import WorkerError
from . import protocol
from .process import (HOLD_BUDGET_S, Job, WorkerSpec, WorkerStartError, may_hold_batch,
                      resolve_jobs)

log = logging.getLogger("dagserve.workers")

_ids = itertools.count(1)
CLOSE_TIMEOUT_S = 5.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RayWorker:
    def __init__(self, spec: WorkerSpec, *, cluster: Any, model: Any, placement: Any,
                 on_idle: Callable[["RayWorker"], None],
                 on_exit: Callable[["RayWorker", str], None],
                 on_metrics: Callable[[list[dict]], None] | None = None,
                 **_local: Any):  # a local worker's sock_dir, gpu_id, threads, log_file
        self.spec = spec
        self.id = f"ray-{next(_ids)}"
        self.status = "STARTING"
        self.start_time = time.time()
        self.pid: int | None = None  # the actor's process id, on its node
        self.node_id: str | None = None
        self._cluster = cluster
        self._model = model
        self._placement = placement
        self.gpu_id = 0 if placement.num_gpus > 0 else None  # Ray sets CUDA_VISIBLE_DEVICES
        self._on_idle = on_idle
        self._on_exit = on_exit
        self._on_metrics = on_metrics
        self._actor: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batches: deque[list[Job]] = deque()  # the running one first, then held ones
        self._started = 0.0
        self._batch_s = HOLD_BUDGET_S
        self.on_room: Callable[[RayWorker], None] | None = None
        self.on_unstarted: Callable[[RayWorker, list[Job]], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._dead = False
        self._stopping = False

    # -- life cycle ---------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        spec = self.spec
        return {"model_name": spec.model_name, "handler": spec.handler,
                "gpu_id": self.gpu_id, "batch_size": spec.batch_size,
                "threads": self._placement.threads(), "decode_input": spec.decode_input,
                "server_version": spec.server_version, "config_file": spec.config_file,
                **spec.extra}

    async def start(self) -> None:
        import ray

        from .ray_actor import ModelActor

        self._loop = asyncio.get_running_loop()
        why = await asyncio.to_thread(self._cluster.missing, self._placement)
        if why is not None:
            raise WorkerStartError(f"cannot place a Ray worker of {self.spec.model_name}: {why}")
        model = await self._model.ref()
        self._actor = ModelActor.options(**self._placement.actor_options()).remote(
            model, self._settings())
        watch = self._wrap(self._actor.watch.remote())
        ready = self._wrap(self._actor.ready.remote())
        try:
            async with asyncio.timeout(self.spec.startup_timeout):
                await asyncio.wait({ready, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                raise WorkerStartError(f"Ray actor died before it loaded the model: "
                                       f"{_first_line(watch.exception() or RuntimeError())}")
            info = ready.result()
            if not info.get("ok"):
                raise WorkerStartError(info.get("message") or "load failed")
        except TimeoutError:
            self.kill()
            raise WorkerStartError(f"Ray worker did not load the model within "
                                   f"{self.spec.startup_timeout:g} s (is the cluster short of "
                                   f"{self._placement.actor_options()}?)") from None
        except ray.exceptions.RayError as exc:
            self.kill()
            raise WorkerStartError(f"Ray worker failed to start: {_first_line(exc)}") from None
        except BaseException:
            self.kill()
            raise
        self.pid, self.node_id = info.get("pid"), info.get("node_id")
        watch.add_done_callback(self._watch_done)
        self.status = "READY"
        self.start_time = time.time()

    def _wrap(self, ref: Any) -> asyncio.Future:
        """An ObjectRef as a future of this event loop."""
        return asyncio.wrap_future(ref.future(), loop=self._loop)

    def _watch_done(self, fut: asyncio.Future) -> None:
        exc = None if fut.cancelled() else fut.exception()
        self._die(f"Ray worker died: {_first_line(exc)}" if exc is not None
                  else "Ray worker stopped.")

    def kill(self) -> None:
        """Kill the actor (no Ray restart); used on timeout and shutdown."""
        if self._actor is not None:
            import ray

            try:
                ray.kill(self._actor, no_restart=True)
            except Exception as exc:  # already gone, or the cluster is unreachable
                log.debug("could not kill Ray worker %s: %s", self.id, exc)

    async def stop(self) -> None:
        """Stop on purpose: let the actor remove its model files, then kill it."""
        self._stopping = True
        self.status = "UNLOADING"
        if self._actor is not None and not self._dead:
            try:
                await asyncio.wait_for(self._wrap(self._actor.close.remote()), CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - dead or stuck: killed below either way
                pass
        self.kill()
        self._die("Worker stopped.")

    @property
    def alive(self) -> bool:
        return not self._dead

    @property
    def busy(self) -> bool:
        return bool(self._batches)

    def can_take_batch(self) -> bool:
        return may_hold_batch(bool(self._batches), max(0, len(self._batches) - 1),
                              self._batch_s)

    # -- batches ------------------------------------------------------------------------

    def dispatch(self, jobs: list[Job]) -> None:
        """Send a batch: one Ray call that the actor runs after those already sent."""
        assert self._actor is not None and jobs
        self._batches.append(jobs)
        if len(self._batches) == 1:
            self._start_batch(time.perf_counter())
        try:
            ref = self._actor.predict.remote(protocol.encode_predict([j.request for j in jobs]))
        except Exception as exc:  # the driver lost the cluster
            self._die(f"Ray worker unreachable: {_first_line(exc)}")
            return
        loop = self._loop
        assert loop is not None
        ref.future().add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._on_result, jobs, done))

    def _start_batch(self, now: float) -> None:
        self._started = now
        timeout = self.spec.response_timeout
        if timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        log.warning("Ray worker %s of %s passed its response timeout (%g s); killing it",
                    self.id, self.spec.model_name, self.spec.response_timeout)
        self._fail_running(WorkerError(
            f"Worker timed out after {self.spec.response_timeout:g} s", 504))
        self.kill()

    def _on_result(self, jobs: list[Job], done: concurrent.futures.Future) -> None:
        if not self._batches or self._batches[0] is not jobs:
            return  # failed already (timeout or death)
        exc = done.exception()
        if exc is not None:
            self._die(f"Ray worker failed: {_first_line(exc)}")
            self.kill()
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._batches.popleft()
        now = time.perf_counter()
        self._batch_s += 0.2 * (now - self._started - self._batch_s)
        if self._batches:
            self._start_batch(now)
        try:
            meta, body = protocol.split_frame(done.result())
            resolve_jobs(jobs, protocol.decode_result(meta, body))
        except (protocol.ProtocolError, KeyError, ValueError) as error:
            resolve_jobs(jobs, [])  # 503 for each: the worker answered nonsense
            log.error("Ray worker %s sent a bad result frame: %s", self.id, error)
            metrics = None
        else:
            metrics = meta.get("metrics")
        if metrics and self._on_metrics is not None:
            self._on_metrics(metrics)
        if self._dead:
            return
        if not self._batches:
            self._on_idle(self)
        elif self.on_room is not None:
            self.on_room(self)

    # -- death --------------------------------------------------------------------------

    def _fail_running(self, error: Exception) -> None:
        """Fail the running batch; hand those behind it (never started) back."""
        batches, self._batches = self._batches, deque()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not batches:
            return
        for job in batches.popleft():
            if not job.future.done():
                job.future.set_exception(error)
        unstarted = [job for batch in batches for job in batch]
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
        self.status = "STOPPED" if self._stopping else "DEAD"
        self._fail_running(WorkerError(reason, 500))
        self._on_exit(self, reason)
