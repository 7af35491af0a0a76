"""Connection-level protection for every port: what aiohttp answers before a request reaches
the middlewares, and clients that send too slowly.

- A request aiohttp cannot parse (a header or URL over 8190 bytes, too many headers, bad
  syntax) gets TorchServe's JSON error body (``{"code", "type", "message"}``), not aiohttp's
  plain-text page.
- Slow clients (slowloris): a request's headers must be complete within
  ``request_header_timeout`` seconds of its first byte (or of the connection being opened),
  and its body within ``request_body_timeout`` seconds of the headers; otherwise the
  connection gets a 408 JSON body and is closed. A request that arrives in one piece (the
  usual case) costs no timer at all.

aiohttp has no hook for either, so this subclasses its ``RequestHandler`` (the per-connection
protocol) and ``web.Server`` (its factory); ``guard`` turns a runner's server (after
``setup()``) into a guarded one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..errors import error_body

HEADER_TIMEOUT_S = 30.0
BODY_TIMEOUT_S = 60.0

_TYPES = {400: "BadRequestException", 408: "RequestTimeoutException",
          413: "RequestEntityTooLargeException", 431: "BadRequestException"}


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = error_body(status, _TYPES.get(status, "InternalServerException"), message)
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol with JSON parse errors and read deadlines."""

    def __init__(self, manager: "GuardedServer", **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._header_timeout = manager.header_timeout
        self._body_timeout = manager.body_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._body: Any = None  # the payload of the request whose body is still coming

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm(self._header_timeout, "headers")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        messages = self._messages
        before = len(messages)
        body = self._body
        in_body = body is not None and not body.is_eof()
        super().data_received(data)
        if len(messages) > before:  # a request's headers are complete
            payload = messages[-1][1]
            self._disarm()
            self._body = None
            if not payload.is_eof():
                self._body = payload
                self._arm(self._body_timeout, "body")
            return
        if body is not None and body.is_eof():  # that body is complete
            self._disarm()
            self._body = None
        if not in_body and self._deadline is None and data and not self._force_close:
            self._arm(self._header_timeout, "headers")  # the start of a request's head

    def _arm(self, seconds: float, what: str) -> None:
        if seconds > 0:
            self._deadline = self._loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        if what == "body" and (self._body is None or self._body.is_eof()):
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        seconds = self._header_timeout if what == "headers" else self._body_timeout
        if what == "headers" or self._body is not None:
            transport.write(_raw_error(408, "Request Timeout",
                                       f"The request {what} did not arrive within {seconds:g} s"))
        self.force_close()
        transport.close()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
            text = "Internal server error"
        else:
            text = " ".join(str(message or getattr(exc, "message", "") or "Bad request").split())
        resp = web.Response(status=status, content_type="application/json",
                            body=error_body(status, _TYPES.get(status, "BadRequestException")
                                            if status < 500 else "InternalServerException",
                                            text))
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    """``web.Server`` whose connections are ``GuardedRequestHandler``s."""

    header_timeout = HEADER_TIMEOUT_S
    body_timeout = BODY_TIMEOUT_S

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


def guard(server: web.Server, header_timeout: float, body_timeout: float) -> GuardedServer:
    """Make ``server`` (an aiohttp ``web.Server``, e.g. an AppRunner's) a GuardedServer: the
    subclass adds behaviour and no state of its own, so changing the class is enough."""
    if not isinstance(server, GuardedServer):
        server.__class__ = GuardedServer
    server.header_timeout = header_timeout  # type: ignore[attr-defined]
    server.body_timeout = body_timeout  # type: ignore[attr-defined]
    return server  # type: ignore[return-value]
