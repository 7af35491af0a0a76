"""Cross-cutting concerns of every app: a request id on every response, errors turned into
TorchServe's JSON body, and the access log. One middleware, so the hot path pays for one
extra coroutine frame, not three."""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Awaitable, Callable, Protocol

from aiohttp import web

from ..errors import DagserveError, MethodNotAllowedError, RequestTooLargeError, ResourceNotFoundError
from .responses import error_response

log = logging.getLogger("dagserve.frontend")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class AccessRecorder(Protocol):
    def record(self, remote: str | None, method: str, path: str, status: int,
               duration_ms: float) -> None: ...


class RequestIds:
    """Request ids that are valid version-4 UUID strings: 60 random bits drawn once, then a
    62-bit counter that starts at a random value. Unique across the requests of a server
    and, with overwhelming probability, across servers and restarts, at half of ``uuid4``'s
    cost (which asks the kernel for randomness on every request)."""

    def __init__(self) -> None:
        head = os.urandom(8).hex()
        self._prefix = f"{head[:8]}-{head[8:12]}-4{head[13:16]}-"
        self._next = itertools.count(int.from_bytes(os.urandom(8), "big") >> 2).__next__

    def __call__(self) -> str:
        n = self._next()
        return f"{self._prefix}{0x8000 | (n >> 48) & 0x3FFF:04x}-{n & 0xFFFF_FFFF_FFFF:012x}"


new_request_id = RequestIds()


def _http_error(exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPNotFound):
        err: DagserveError = ResourceNotFoundError()
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        err = MethodNotAllowedError()
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        err = RequestTooLargeError(exc.text or "Request entity too large")
    else:
        return error_response(exc.status, type(exc).__name__, exc.reason)
    return error_response(err.status, err.type_name or type(err).__name__, err.message)


def make_common_middleware(access: AccessRecorder | None,
                           extra_headers: dict[str, str] | None = None,
                           redact: Callable[[str], str] | None = None):
    """``extra_headers`` go on every response (the configured CORS headers); ``redact``
    takes the server's own paths out of error messages (redact.py)."""
    perf_counter = time.perf_counter
    next_id = new_request_id

    @web.middleware
    async def common(request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        start = perf_counter()
        request_id = next_id()
        request["request_id"] = request_id
        try:
            response = await handler(request)
        except DagserveError as exc:
            response = error_response(exc.status, exc.type_name or type(exc).__name__,
                                      redact(exc.message) if redact else exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _http_error(exc)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = error_response(500, "InternalServerException", "Internal server error")
        response.headers["x-request-id"] = request_id
        if extra_headers:
            response.headers.update(extra_headers)
        if access is not None:
            access.record(request.remote, request.method, request.path_qs, response.status,
                          (perf_counter() - start) * 1e3)
        return response

    return common
