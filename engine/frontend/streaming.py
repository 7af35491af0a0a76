"""HTTP responses of streaming handlers: one chunk of a chunked response per intermediate
result, the handler's return value last (TorchServe's layout).

The status and headers are the first chunk's. The chunks are written in ``write_eof``,
which aiohttp calls after the middlewares have added their headers. A client that goes
away stops the stream (the worker's handler gets StreamCancelled at its next send). An
error after the first chunk cannot change the status any more: its JSON error body
(``{"code", "type", "message"}``) is the last chunk, and the connection is closed without
the terminating chunk, so the client sees an incomplete transfer, not a success.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import DagserveError, error_body
from ..messages import Response
from ..workers.stream import ResultStream

log = logging.getLogger("dagserve.frontend")


class ChunkedStreamResponse(web.StreamResponse):
    def __init__(self, stream: ResultStream, first: Response):
        super().__init__(status=first.code)
        self._stream = stream
        self._first = first
        if first.content_type:
            self.content_type = first.content_type
        if first.headers:
            self.headers.update(first.headers)
        self.enable_chunked_encoding()

    async def write_eof(self, data: bytes = b"") -> None:
        stream = self._stream
        try:
            await self.write(self._first.value)
            async for chunk in stream:
                if chunk.code >= 400:
                    raise DagserveError(chunk.message or "Prediction failed", chunk.code)
                await self.write(chunk.value)
        except ConnectionResetError:
            stream.cancel()
            return
        except DagserveError as exc:
            await self._abort(exc.status, exc.type_name or "InternalServerException",
                              exc.message)
            return
        await super().write_eof(data)

    async def _abort(self, status: int, type_name: str, message: str) -> None:
        log.warning("stream of request %s failed after it started: %s", self._stream.request_id,
                    message)
        try:
            await self.write(error_body(status, type_name, message))
        except ConnectionResetError:
            pass
        transport = self._req.transport if self._req is not None else None
        if transport is not None:
            transport.close()


async def stream_response(stream: ResultStream) -> web.StreamResponse:
    """The response for a stream (its first chunk is awaited here, so an error before any
    chunk is an ordinary error response)."""
    first = await stream.next()
    if first is None:  # ended without a chunk (cannot happen: the first chunk started it)
        return web.Response(status=200)
    return ChunkedStreamResponse(stream, first)
