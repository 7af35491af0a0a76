"""The inference API (default 127.0.0.1:8080): /ping, /predictions, /explanations,
/wfpredict and the OpenAPI description at ``OPTIONS /``.

Every request of the hot path comes through here, so this app is aiohttp's low-level
``web.Server`` with the few routes below matched by hand, not a ``web.Application``: the
application's router, match-info objects and middleware wrapping cost about a fifth of the
frontend's time per request. The middlewares are the same ones the other apps use
(``async def mw(request, handler)``), applied in the same order, to the handler the route
resolved to (or to one that raises 404 / 405), so auth, error bodies, request ids and the
access log behave exactly as on the other ports.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any, Awaitable, Callable

from aiohttp import HttpVersion11, web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from ..errors import (DagserveError, InternalServerError, MethodNotAllowedError,
                      ResourceNotFoundError)
from ..readiness import Readiness
from ..registry import Registry
from ..messages import Request, Response
from ..tracing import Tracer
from .http_input import read_params
from .openapi import inference_openapi, model_openapi
from ..workers.stream import ResultStream
from .responses import handler_response, json_response
from ..handler.context import SEQUENCE_ID_HEADER
from .sequences import gates_for, sequence_headers
from .streaming import stream_response
from .v2.core import OpenInference
from .v2.rest import V2Routes
from .traced import (drop_query_flag, failed_answer, failed_reply, traced_predict,
                     traced_workflow)

HEALTHY = json.dumps({"status": "Healthy"}, indent=2).encode()

WorkflowRunner = Callable[..., Awaitable[Response]]  # (name, request, version[, trace])
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

INFERENCE_METHODS = frozenset({"POST", "PUT"})
PING_METHODS = frozenset({"GET", "HEAD", "POST"})


class InferenceRoutes:
    def __init__(self, registry: Registry, run_workflow: WorkflowRunner | None,
                 max_response_size: int | None = None, readiness: Readiness | None = None,
                 open_inference: bool = False, tracer: Tracer | None = None):
        self.registry = registry
        self.readiness = readiness or Readiness(registry)
        self.run_workflow = run_workflow
        self.max_response_size = max_response_size
        self.sequences = gates_for(registry)  # stateful models (sequenceBatching)
        # the Open Inference Protocol's /v2 routes (ts_open_inference_protocol)
        self.v2 = V2Routes(OpenInference(registry, run_workflow)) if open_inference else None
        self.tracer = tracer if tracer is not None else Tracer()

    def _reply(self, resp: Response) -> web.Response:
        limit = self.max_response_size
        if limit is not None and len(resp.value) > limit:
            raise InternalServerError(f"Response size {len(resp.value)} bytes exceeds "
                                      f"max_response_size ({limit} bytes)")
        return handler_response(resp)

    async def _answer(self, resp) -> web.StreamResponse:
        """A handler's response, or its stream passed through as it is produced."""
        if resp.__class__ is ResultStream:
            return await stream_response(resp)
        return self._reply(resp)

    async def ping(self, request: web.BaseRequest) -> web.Response:
        """Liveness: Healthy while the server serves. ``?ready=true``: readiness (see
        readiness.py), 503 while models are still loading."""
        if request.query_string and request.query.get("ready", "").lower() in ("true", "1"):
            report = self.readiness.report()
            return json_response(200 if report.ready else 503,
                                 json.dumps(report.body(), indent=2).encode())
        return json_response(200, HEALTHY)

    async def predict(self, request: web.BaseRequest, model: str, version: str | None,
                      explain: bool = False, url_path: str = "") -> web.Response:
        mv = self.registry.get(model, version)
        start = time.perf_counter()
        tracer = self.tracer
        try:
            mv.pool.check_can_serve()
            headers = dict(request.headers)
            headers["url_path"] = url_path  # path segments after the version, as TorchServe
            if explain:
                headers["explain"] = "True"
            req = Request(request["request_id"], await read_params(request), headers)
        except DagserveError as exc:  # no worker, a malformed body: failed, so traced
            return failed_reply(tracer, "model", mv.name, request["request_id"], start, exc)
        gate = self.sequences.for_model(mv)
        if gate is None and tracer.wanted(request.headers, request.query_string):
            drop_query_flag(req, request.query_string)
            return await traced_predict(tracer, mv, req, self._answer,
                                        tracer.keeps(request.headers, request.query_string))
        status = 500
        try:
            if gate is None:
                resp = await mv.queue.submit(req)
            else:  # a stateful model: the request's turn in its sequence
                sequence = sequence_headers(headers, request.headers.get(SEQUENCE_ID_HEADER))
                resp = await gate.run(sequence, partial(mv.queue.submit, req))
            if resp.__class__ is ResultStream:  # the handler streams its results
                status = 200
                out = await stream_response(resp)
            else:
                status = resp.code
                out = self._reply(resp) if status < 400 else \
                    failed_answer(tracer, mv.name, req.id, start, resp, self._reply)
            if gate is not None:
                out.headers[SEQUENCE_ID_HEADER] = sequence
            return out
        except DagserveError as exc:
            status = exc.status
            return failed_reply(tracer, "model", mv.name, req.id, start, exc)
        except BaseException as exc:
            status = getattr(exc, "status", 500)
            raise
        finally:
            mv.stats.count(status, time.perf_counter() - start)

    async def wfpredict(self, request: web.BaseRequest, workflow: str,
                        version: str | None = None) -> web.Response:
        # 404 before reading the body; the version found here is the one the request runs
        entry = self.registry.workflow(workflow, version)
        if self.run_workflow is None:
            raise ResourceNotFoundError()
        start = time.perf_counter()
        tracer = self.tracer
        try:
            params = await read_params(request)
        except DagserveError as exc:
            return failed_reply(tracer, "workflow", workflow, request["request_id"], start, exc)
        req = Request(request["request_id"], params, dict(request.headers))
        if tracer.wanted(request.headers, request.query_string):
            drop_query_flag(req, request.query_string)
            return await traced_workflow(
                tracer, workflow, req,
                lambda r, trace: self.run_workflow(workflow, r, entry.version, trace),
                self._answer, tracer.keeps(request.headers, request.query_string))
        try:
            resp = await self.run_workflow(workflow, req, entry.version)
        except DagserveError as exc:
            return failed_reply(tracer, "workflow", workflow, req.id, start, exc)
        return await self._answer(resp)

    async def options(self, request: web.BaseRequest) -> web.Response:
        return json_response(200, inference_openapi())

    async def model_options(self, request: web.BaseRequest, model: str,
                            version: str | None) -> web.Response:
        mv = self.registry.get(model, version)
        return json_response(200, model_openapi(mv.name, mv.version))


async def _not_found(request: web.BaseRequest) -> web.StreamResponse:
    raise ResourceNotFoundError()


async def _not_allowed(request: web.BaseRequest) -> web.StreamResponse:
    raise MethodNotAllowedError()


class InferenceRouter:
    """``(method, path)`` -> the handler to run. Path segments are matched as aiohttp's
    router would match ``/predictions/{model_name}/{version}``: non-empty, no extra ones."""

    def __init__(self, routes: InferenceRoutes):
        self.routes = routes

    def resolve(self, method: str, path: str) -> Handler:
        routes = self.routes
        parts = path.split("/")
        n = len(parts)
        if n >= 3 and parts[1] == "predictions" or 3 <= n <= 4:
            kind = parts[1]
            if kind == "predictions" or kind == "explanations":
                if not (parts[2] and parts[-1]):
                    return _not_found
                version = parts[3] if n >= 4 else None
                if method == "OPTIONS" and n <= 4:
                    return partial(routes.model_options, model=parts[2], version=version)
                if method not in INFERENCE_METHODS:
                    return _not_allowed
                return partial(routes.predict, model=parts[2], version=version,
                               explain=kind == "explanations",
                               url_path="/".join(parts[4:]))
            if kind == "wfpredict" and parts[2] and parts[-1]:
                if method not in INFERENCE_METHODS:
                    return _not_allowed
                return partial(routes.wfpredict, workflow=parts[2],
                               version=parts[3] if n == 4 else None)
        elif path == "/ping":
            return routes.ping if method in PING_METHODS else _not_allowed
        elif path == "/":
            return routes.options if method == "OPTIONS" else _not_allowed
        elif path == "/api-description":
            return routes.options if method == "GET" else _not_allowed
        if n >= 2 and parts[1] == "v2" and routes.v2 is not None:
            return routes.v2.resolve(method, parts) or _not_found
        return _not_found


async def _expect_continue(request: web.BaseRequest) -> None:
    """``Expect: 100-continue`` (curl sends it before a body over 1 KiB): say go on, as
    aiohttp's router does before the middlewares run."""
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11:
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started


class InferenceServer(web.Server):
    """The low-level aiohttp server of the inference port: route, then middlewares."""

    def __init__(self, router: InferenceRouter, *, middlewares: list, max_request_size: int,
                 **kwargs: Any):
        super().__init__(self._handle, request_factory=self._new_request, **kwargs)
        self.router = router
        self._middlewares = tuple(reversed([m for m in middlewares if m is not None]))
        self._max_request_size = max_request_size

    def _new_request(self, message: RawRequestMessage, payload: StreamReader,
                     protocol: RequestHandler, writer: Any, task: Any) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, self._loop,
                               client_max_size=self._max_request_size)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self.router.resolve(request.method, request.path)
        if "Expect" in request.headers:
            await _expect_continue(request)
        for middleware in self._middlewares:
            handler = partial(middleware, handler=handler)
        return await handler(request)


def build_inference_server(registry: Registry, *, middlewares: list, max_request_size: int,
                           run_workflow: WorkflowRunner | None = None,
                           max_response_size: int | None = None,
                           readiness: Readiness | None = None,
                           open_inference: bool = False,
                           tracer: Tracer | None = None,
                           **server_options: Any) -> InferenceServer:
    """The inference API as a ``web.Server`` (serve it with ``web.ServerRunner``);
    ``server_options`` go to aiohttp's request handler (``access_log=None`` ...)."""
    router = InferenceRouter(InferenceRoutes(registry, run_workflow, max_response_size,
                                             readiness, open_inference, tracer))
    return InferenceServer(router, middlewares=middlewares, max_request_size=max_request_size,
                           **server_options)
