"""Cross-cutting concerns of every app: a request id on every response, errors turned into
TorchServe's JSON body, and the access log. One middleware, so the hot path pays for one
extra coroutine frame, not three."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Awaitable, Callable, Protocol

from aiohttp import web

from ..errors import DagserveError, MethodNotAllowedError, RequestTooLargeError, ResourceNotFoundError
from .responses import error_response

log = logging.getLogger("dagserve.frontend")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AccessRecorder(Protocol):
    def record(self, remote: str | None, method: str, path: str, status: int,
               duration_ms: float) -> None: ...


def new_request_id() -> str:
    return str(uuid.uuid4())


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


def make_common_middleware(access: AccessRecorder | None):
    @web.middleware
    async def common(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        request_id = new_request_id()
        request["request_id"] = request_id
        try:
            response = await handler(request)
        except DagserveError as exc:
            response = error_response(exc.status, exc.type_name or type(exc).__name__,
                                      exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _http_error(exc)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = error_response(500, "InternalServerException", "Internal server error")
        response.headers["x-request-id"] = request_id
        if access is not None:
            access.record(request.remote, request.method, request.path_qs, response.status,
                          (time.perf_counter() - start) * 1e3)
        return response

    return common
