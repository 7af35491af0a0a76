"""``ts.handler_utils.micro_batching.MicroBatching``: split a batch into micro-batches that
flow through ``preprocess`` -> ``inference`` -> ``postprocess`` concurrently, each step with
its own number of threads (``parallelism``), so one micro-batch's inference overlaps the
next one's preprocessing. Used as TorchServe documents it::

    class MyHandler(BaseHandler):
        def __init__(self):
            super().__init__()
            self.handle = MicroBatching(self, micro_batch_size=4)

The output keeps the input's order."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["HANDLER_METHODS", "MicroBatching"]

HANDLER_METHODS = ["preprocess", "inference", "postprocess"]


class MicroBatching:
    def __init__(self, parent_handler: Any, micro_batch_size: int = 1,
                 parallelism: dict[str, int] | None = None) -> None:
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        self.handler = parent_handler
        self.micro_batch_size = micro_batch_size
        self._parallelism: dict[str, int] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self.thread_local_data = threading.local()
        self.parallelism = dict(parallelism or {})

    @property
    def parallelism(self) -> dict[str, int]:
        return dict(self._parallelism)

    @parallelism.setter
    def parallelism(self, parallelism: dict[str, int]) -> None:
        """Threads per step (``preprocess``, ``inference``, ``postprocess``; default 1)."""
        unknown = set(parallelism) - set(HANDLER_METHODS)
        if unknown:
            raise ValueError(f"parallelism keys must be among {HANDLER_METHODS}, got "
                             f"{sorted(unknown)}")
        for step, threads in parallelism.items():
            if not isinstance(threads, int) or threads < 1:
                raise ValueError(f"parallelism of {step} must be an integer >= 1, got "
                                 f"{threads!r}")
        self._parallelism.update(parallelism)
        old, self._pools = self._pools, {
            step: ThreadPoolExecutor(self._parallelism.get(step, 1),
                                     thread_name_prefix=f"micro-batch-{step}")
            for step in HANDLER_METHODS}
        for pool in old.values():
            pool.shutdown(wait=True)

    def shutdown(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True)

    def __del__(self) -> None:
        pools = getattr(self, "_pools", {})
        for pool in pools.values():
            pool.shutdown(wait=False)

    def get_micro_batch_idx(self) -> int | None:
        """Inside a step: the index of the micro-batch being processed."""
        return getattr(self.thread_local_data, "micro_batch_idx", None)

    def _step(self, step: str, idx: int, value: Any) -> Any:
        self.thread_local_data.micro_batch_idx = idx
        return getattr(self.handler, step)(value)

    def _pipeline(self, idx: int, chunk: list) -> Future:
        """Run one micro-batch through the steps; the returned future holds its output."""
        result: Future = Future()

        def run(position: int, value: Any) -> None:
            if position == len(HANDLER_METHODS):
                result.set_result(value)
                return
            future = self._pools[HANDLER_METHODS[position]].submit(
                self._step, HANDLER_METHODS[position], idx, value)
            future.add_done_callback(lambda f: advance(position, f))

        def advance(position: int, future: Future) -> None:
            exc = future.exception()
            if exc is not None:
                result.set_exception(exc)
            else:
                run(position + 1, future.result())

        run(0, chunk)
        return result

    def handle(self, data: list) -> list:
        size = self.micro_batch_size
        futures = [self._pipeline(idx, data[start:start + size])
                   for idx, start in enumerate(range(0, len(data), size))]
        return [item for future in futures for item in future.result()]

    def __call__(self, data: list, context: Any) -> list:
        """The handler's ``handle``: describe and explain requests take the usual path."""
        start = time.perf_counter()
        handler = self.handler
        handler.context = context
        if handler._is_describe():
            output = [handler.describe_handle()]
        elif handler._is_explain():
            output = handler.explain_handle(handler.preprocess(data), data)
        else:
            output = self.handle(data)
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2),
                                 None, "ms")
        return output
