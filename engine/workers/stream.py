"""The result of a job whose handler streams: its future resolves to a
:class:`ResultStream` at the first intermediate result, instead of to a ``Response``; the
chunks that follow, and the handler's final return value (the last chunk), arrive through
it. A worker that dies or times out mid-stream fails it with that error. Code that cannot
stream collects it into one response (all chunks' bytes joined)."""

from __future__ import annotations

import asyncio
from typing import Any

from ..messages import Response

_END = object()


class ResultStream:
    __slots__ = ("request_id", "_worker", "_queue", "_ended", "wanted")

    def __init__(self, request_id: str, worker: Any):
        self.request_id = request_id
        self._worker = worker  # the WorkerProcess running the request (to cancel it)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._ended = False
        self.wanted = True  # False once its client went away

    # -- fed by the worker process --------------------------------------------------

    def push(self, chunk: Response) -> None:
        self._queue.put_nowait(chunk)

    def finish(self, last: Response) -> None:
        self._queue.put_nowait(last)
        self._queue.put_nowait(_END)

    def fail(self, error: BaseException) -> None:
        self._queue.put_nowait(error)

    # -- read by a frontend ---------------------------------------------------------

    async def next(self) -> Response | None:
        """The next chunk, None after the last; raises the error that ended the stream."""
        if self._ended:
            return None
        item = await self._queue.get()
        if item is _END:
            self._ended = True
            return None
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item

    def __aiter__(self) -> "ResultStream":
        return self

    async def __anext__(self) -> Response:
        chunk = await self.next()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def cancel(self) -> None:
        """The client went away: the handler stops at its next intermediate send."""
        if not self._ended:
            self._ended = True
            self.wanted = False
            self._worker.cancel_requests([self.request_id])

    async def collect(self) -> Response:
        """The whole stream as one response: the first chunk's status and content type,
        every chunk's bytes joined; an error chunk ends it with that error."""
        first: Response | None = None
        parts: list[bytes] = []
        async for chunk in self:
            if first is None:
                first = chunk
            if chunk.code >= 400:
                return chunk
            parts.append(chunk.value)
        assert first is not None
        return Response(first.id, first.code, b"".join(parts), first.content_type,
                        first.headers, first.message)
