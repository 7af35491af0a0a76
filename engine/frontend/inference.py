"""The inference API (default 127.0.0.1:8080): /ping, /predictions, /explanations,
/wfpredict and the OpenAPI description at ``OPTIONS /``."""

from __future__ import annotations

import json
import time
from typing import Awaitable, Callable

from aiohttp import web

from ..registry import Registry
from ..workers.protocol import Request, Response
from .http_input import read_params
from .openapi import inference_openapi
from .responses import handler_response, json_response

HEALTHY = json.dumps({"status": "Healthy"}, indent=2).encode()
UNHEALTHY = json.dumps({"status": "Unhealthy"}, indent=2).encode()

WorkflowRunner = Callable[[str, Request], Awaitable[Response]]


class InferenceRoutes:
    def __init__(self, registry: Registry, run_workflow: WorkflowRunner | None):
        self.registry = registry
        self.run_workflow = run_workflow

    async def ping(self, request: web.Request) -> web.Response:
        healthy = all(mv.pool.ready_count >= mv.min_workers
                      for mv in self.registry.all_versions())
        return json_response(200, HEALTHY) if healthy else json_response(500, UNHEALTHY)

    async def predict(self, request: web.Request, explain: bool = False) -> web.Response:
        info = request.match_info
        mv = self.registry.get(info["model_name"], info.get("version"))
        mv.pool.check_can_serve()
        start = time.perf_counter()
        headers = dict(request.headers)
        if explain:
            headers["explain"] = "True"
        req = Request(request["request_id"], await read_params(request), headers)
        status = 500
        try:
            resp = await mv.queue.submit(req)
            status = resp.code
            return handler_response(resp)
        except BaseException as exc:
            status = getattr(exc, "status", 500)
            raise
        finally:
            mv.stats.count(status, time.perf_counter() - start)

    async def explain(self, request: web.Request) -> web.Response:
        return await self.predict(request, explain=True)

    async def wfpredict(self, request: web.Request) -> web.Response:
        name = request.match_info["workflow_name"]
        self.registry.workflow(name)  # 404 before reading the body
        if self.run_workflow is None:
            raise web.HTTPNotFound()
        req = Request(request["request_id"], await read_params(request), dict(request.headers))
        return handler_response(await self.run_workflow(name, req))

    async def options(self, request: web.Request) -> web.Response:
        return json_response(200, inference_openapi())


def build_inference_app(registry: Registry, *, middlewares: list, max_request_size: int,
                        run_workflow: WorkflowRunner | None = None) -> web.Application:
    routes = InferenceRoutes(registry, run_workflow)
    app = web.Application(middlewares=middlewares, client_max_size=max_request_size)
    r = app.router
    r.add_get("/ping", routes.ping)
    r.add_post("/ping", routes.ping)
    for method in ("POST", "PUT"):
        r.add_route(method, "/predictions/{model_name}", routes.predict)
        r.add_route(method, "/predictions/{model_name}/{version}", routes.predict)
        r.add_route(method, "/explanations/{model_name}", routes.explain)
        r.add_route(method, "/explanations/{model_name}/{version}", routes.explain)
        r.add_route(method, "/wfpredict/{workflow_name}", routes.wfpredict)
    r.add_route("OPTIONS", "/", routes.options)
    return app
