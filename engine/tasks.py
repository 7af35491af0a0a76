"""The owner of the server's background tasks: one anyio task group.

Async registrations, worker exit watchers, worker restarts, scaling requested without
waiting, and the periodic log and metrics writers all start here through :meth:`TaskOwner.spawn`,
never with a bare ``ensure_future``. At shutdown the runtime calls :meth:`TaskOwner.close`:
what is still running is cancelled and awaited, so nothing started by the server outlives it
(and nothing writes a snapshot after the last one). A task can also be cancelled on its own
(a worker's watcher when the worker is stopped) through its :class:`TaskHandle`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

log = logging.getLogger("dagserve.tasks")


class TaskHandle:
    """One spawned task: cancel it, or wait until it has finished (for any reason)."""

    __slots__ = ("name", "scope", "error", "_done", "_finished", "_cancelled")

    def __init__(self, name: str):
        # Nothing anyio-specific is made here: spawn may be called from a transport
        # callback, outside any task, where anyio (with sniffio installed) cannot tell the
        # async library. The cancel scope is made when the task starts.
        self.name = name
        self.scope: anyio.CancelScope | None = None
        self.error: BaseException | None = None
        self._done = asyncio.Event()
        self._finished = False
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    @property
    def finished(self) -> bool:
        return self._finished

    async def wait(self) -> None:
        await self._done.wait()

    def _finish(self) -> None:
        self._finished = True
        self._done.set()


class TaskOwner:
    """Starts tasks in one task group; :meth:`close` cancels and awaits them all."""

    def __init__(self, group: TaskGroup):
        """Made inside a task (the server's). Spawns requested from outside any task (a
        transport callback, where anyio cannot start a task) go through a dispatcher task
        of the group."""
        self._group = group
        self._handles: set[TaskHandle] = set()
        self._closing = False
        self._requests: asyncio.Queue = asyncio.Queue()
        self._dispatcher = TaskHandle("task dispatcher")
        self._handles.add(self._dispatcher)
        group.start_soon(self._run, self._dispatcher, self._dispatch, (), name="task dispatcher")

    async def _dispatch(self) -> None:
        while True:
            handle, fn, args = await self._requests.get()
            if not handle.finished:
                self._group.start_soon(self._run, handle, fn, args, name=handle.name)

    @property
    def closing(self) -> bool:
        return self._closing

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str) -> TaskHandle:
        """Run ``fn(*args)`` in the group. Its failure is logged with ``name``, never
        raised into the group (one failed registration must not stop the server). Once the
        owner is closing, the task is not started and the handle is already finished."""
        handle = TaskHandle(name)
        if self._closing:
            handle.cancel()
            handle._finish()
            return handle
        self._handles.add(handle)
        if asyncio.current_task() is None:
            self._requests.put_nowait((handle, fn, args))
        else:
            self._group.start_soon(self._run, handle, fn, args, name=name)
        return handle

    async def _run(self, handle: TaskHandle, fn: Callable[..., Awaitable[Any]],
                   args: tuple) -> None:
        try:
            with anyio.CancelScope() as handle.scope:
                if handle._cancelled:
                    handle.scope.cancel()
                await fn(*args)
        except Exception as exc:  # noqa: BLE001 - logged here, it has nobody else to reach
            handle.error = exc
            log.error("%s failed: %s", handle.name, getattr(exc, "message", None) or exc)
        finally:
            self._handles.discard(handle)
            handle._finish()

    async def close(self) -> None:
        """Cancel every task still running and wait until each has finished."""
        self._closing = True
        handles = list(self._handles)
        for handle in handles:
            handle.cancel()
        await self._dispatcher.wait()
        while not self._requests.empty():  # asked for but never started: nothing to wait for
            handle, _, _ = self._requests.get_nowait()
            self._handles.discard(handle)
            handle._finish()
        for handle in handles:
            await handle.wait()
