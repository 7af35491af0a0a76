"""One worker of a model version running as a Ray actor (``ray_actor.ModelActor``) on a
cluster node. It is a :class:`WorkerProcess` whose transport is a Ray call instead of a
Unix socket, so the pool and the batch queue drive it the same way and everything about
batches is shared, not copied: the running batch and the batches held behind it, the
response timeout (a 504, then the actor is killed), a death failing the running batch with
a 500 and handing the held ones back to the queue, the ``on_idle``/``on_exit`` callbacks.

One batch is one Ray call, never one per request: a Ray actor call costs tens of times a
frame on a Unix socket (~0.7 ms against 0.02 ms here, benchmarks/RAY.md). Calls run on the
actor in the order they were sent, as frames do in a local worker's socket; their replies
may reach the event loop out of order and are applied in order.

The actor's death (its process killed, its node gone) is seen at once through its
``watch`` call, which only returns when the actor is closed; the pool then starts a
replacement with backoff, as for a local worker that exited."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from . import protocol
from .process import Job, WorkerProcess, WorkerSpec, WorkerStartError

log = logging.getLogger("dagserve.workers")

CLOSE_TIMEOUT_S = 5.0


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__


class RayWorker(WorkerProcess):
    def __init__(self, spec: WorkerSpec, *, cluster: Any, model: Any, placement: Any,
                 **local: Any):
        super().__init__(spec, **local)
        self.id = f"ray-{self.id}"
        self.gpu_id = 0 if placement.num_gpus > 0 else None  # Ray sets CUDA_VISIBLE_DEVICES
        self.threads = placement.threads()
        self.node_id: str | None = None  # the Ray node the actor runs on
        self._cluster = cluster
        self._model = model  # ray_cluster.ShippedModel
        self._placement = placement
        self._actor: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # replies of held batches that arrived before the running batch's
        self._early: list[tuple[list[Job], concurrent.futures.Future]] = []

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        import ray

        from .ray_actor import ModelActor

        self._loop = asyncio.get_running_loop()
        try:
            why = await asyncio.to_thread(self._cluster.missing, self._placement)
            if why is not None:
                raise WorkerStartError(f"cannot place a Ray worker of {self.spec.model_name}: "
                                       f"{why}")
            model = await self._model.ref()
            # no socket: Ray carries the frames; the actor sets model_dir where it unpacks
            settings = dataclasses.replace(
                self.spec.settings_for(Path(), self.gpu_id, self.threads), socket="")
            self._actor = ModelActor.options(**self._placement.actor_options()).remote(
                model, settings)
        except (WorkerStartError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the cluster refused (options, object
            raise WorkerStartError(  # store full, connection lost): say why, in one line
                f"Ray worker failed to start: {_first_line(exc)}") from None
        watch = self._wrap(self._actor.watch.remote())
        ready = self._wrap(self._actor.ready.remote())
        try:
            async with asyncio.timeout(self.spec.startup_timeout):
                await asyncio.wait({ready, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                raise WorkerStartError(f"Ray actor died before it loaded the model: "
                                       f"{_first_line(watch.exception())}")
            info = ready.result()
            if not info.get("ok"):
                raise WorkerStartError(info.get("message") or "load failed")
        except TimeoutError:
            self.kill()
            raise WorkerStartError(
                f"Ray worker did not load the model within {self.spec.startup_timeout:g} s "
                f"(does the cluster have {self._placement.actor_options()} free?)") from None
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
        """Kill the actor (Ray does not restart it); on timeout, death and shutdown."""
        if self._actor is not None:
            import ray

            try:
                ray.kill(self._actor, no_restart=True)
            except Exception as exc:  # noqa: BLE001 - gone already, or the cluster is
                log.debug("could not kill Ray worker %s: %s", self.id, exc)  # unreachable

    async def stop(self) -> None:
        """Stop on purpose: the actor removes its model files, then it is killed."""
        self._stopping = True
        self.status = "UNLOADING"
        if self._actor is not None and not self._dead:
            try:
                await asyncio.wait_for(self._wrap(self._actor.close.remote()), CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - dead or stuck: killed below either way
                pass
        self._die("Worker stopped.")  # kills the actor

    # -- batches ------------------------------------------------------------------------

    def _send(self, jobs: list[Job]) -> None:
        """One Ray call with the batch's ``predict`` frame; its ``result`` frame comes
        back to this event loop."""
        try:
            ref = self._actor.predict.remote(protocol.encode_predict([j.request for j in jobs]))
        except Exception as exc:  # noqa: BLE001 - the driver lost the cluster
            self._die(f"Ray worker unreachable: {_first_line(exc)}")
            return
        loop = self._loop
        assert loop is not None
        ref.future().add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._call_done, jobs, done))

    def _call_done(self, jobs: list[Job], done: concurrent.futures.Future) -> None:
        """A call's reply. Replies reach the loop in any order (each comes through its
        own Ray callback), while the actor ran the batches in order: one that overtook the
        running batch's reply waits for it."""
        if self._dead:
            self._early.clear()
            return
        if jobs is not self._inflight:
            if any(batch is jobs for batch in self._held):
                self._early.append((jobs, done))
            return  # else this batch failed already (response timeout, death)
        self._finish(done)
        while self._inflight and not self._dead:
            early = next((e for e in self._early if e[0] is self._inflight), None)
            if early is None:
                return
            self._early.remove(early)
            self._finish(early[1])

    def _finish(self, done: concurrent.futures.Future) -> None:
        """The running batch's reply: its responses, or the actor's death."""
        exc = done.exception()
        if exc is not None:  # the actor died (seen here or by its watch, whichever is first)
            import ray

            what = "died" if isinstance(exc, ray.exceptions.RayActorError) else "failed"
            self._die(f"Ray worker {what}: {_first_line(exc)}")
            return
        try:
            meta, body = protocol.split_frame(done.result())
        except protocol.ProtocolError as error:
            self._die(f"Ray worker sent a bad result: {error}")
            return
        self._on_result(meta, body)
