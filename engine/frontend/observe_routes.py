"""The management port's windows into the server: traces, DAG pictures, and the dashboard.

- ``GET /workflows/{w}/traces`` and ``GET /models/{m}/traces``: the last traces kept
  (``?limit=``, default 20), newest first;
- ``GET /workflows/{w}/traces/{id}`` and ``GET /models/{m}/traces/{id}``: one trace;
- ``GET /workflows/{w}/graph?format=mermaid|dot|json[&version=v]`` (``workflows/render.py``);
- ``GET /dashboard``: the page (``dashboard/``, shipped in the package); its script reads
  ``GET /dashboard/data`` (figures of every model and workflow node) every few seconds.

The page and its two static files carry no data and need no key; everything they read goes
through the management port's token check like any other call (the page asks for the key).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from aiohttp import web

from dagserve.workflows.render import FORMATS, RenderError, render

from ..errors import BadRequestError, DagserveError
from ..metrics_families import node_index, outcome_counts
from .params import int_param, json_ok

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
DASHBOARD_FILES = {"/dashboard": ("index.html", "text/html"),
                   "/dashboard/dashboard.js": ("dashboard.js", "application/javascript"),
                   "/dashboard/dashboard.css": ("dashboard.css", "text/css")}
GRAPH_TYPES = {"mermaid": "text/plain", "dot": "text/vnd.graphviz", "json": "application/json"}


class TraceNotFoundError(DagserveError):
    status = 404
    type_name = "TraceNotFoundException"


def _histogram(hist) -> dict:
    return {"bounds": list(hist.bounds), "counts": list(hist.counts)}


def model_figures(mv) -> dict:
    stats = mv.stats
    return {"model": mv.name, "version": mv.version, "calls": stats.requests,
            "outcomes": outcome_counts(stats),
            "workers": sum(1 for w in mv.pool.workers if w.alive),
            "pending": mv.queue.pending, "latency": _histogram(stats.latency),
            "queueWait": _histogram(mv.queue.queue_wait)}


class ObserveRoutes:
    def __init__(self, registry, tracer):
        self.registry = registry
        self.tracer = tracer

    def _limit(self, request: web.Request) -> int:
        limit = int_param(dict(request.query), "limit")
        if limit is not None and limit < 1:
            raise BadRequestError("Parameter limit must be a positive integer.")
        return min(limit or 20, 1000)

    def _one(self, kind: str, target: str, trace_id: str) -> web.Response:
        trace = self.tracer.ring.get(kind, target, trace_id)
        if trace is None:
            raise TraceNotFoundError(f"No trace {trace_id} of {kind} {target} is kept (the "
                                     f"last {self.tracer.ring.size} traces are)")
        return json_ok(trace.to_json())

    async def workflow_traces(self, request: web.Request) -> web.Response:
        name = request.match_info["workflow_name"]
        self.registry.workflow(name)
        traces = self.tracer.ring.recent("workflow", name, self._limit(request))
        return json_ok({"workflow": name, "traces": [t.summary() for t in traces]})

    async def workflow_trace(self, request: web.Request) -> web.Response:
        info = request.match_info
        return self._one("workflow", info["workflow_name"], info["trace_id"])

    async def model_traces(self, request: web.Request) -> web.Response:
        name = request.match_info["model_name"]
        self.registry.versions(name)
        traces = self.tracer.ring.recent("model", name, self._limit(request))
        return json_ok({"model": name, "traces": [t.summary() for t in traces]})

    async def model_trace(self, request: web.Request) -> web.Response:
        info = request.match_info
        return self._one("model", info["model_name"], info["trace_id"])

    async def graph(self, request: web.Request) -> web.Response:
        entry = self.registry.workflow(request.match_info["workflow_name"],
                                       request.query.get("version") or None)
        fmt = request.query.get("format", "json")
        if fmt not in FORMATS:
            raise BadRequestError(f"Parameter format must be one of {', '.join(FORMATS)}, "
                                  f"got {fmt!r}")
        try:
            text = render(entry.compiled.to_json(), fmt)
        except RenderError as exc:
            raise BadRequestError(str(exc)) from None
        return web.Response(text=text, content_type=GRAPH_TYPES[fmt])

    async def dashboard_file(self, request: web.Request) -> web.Response:
        name, content_type = DASHBOARD_FILES[request.path]
        return web.Response(body=(DASHBOARD_DIR / name).read_bytes(),
                            content_type=content_type,
                            headers={"Cache-Control": "no-cache"})

    async def dashboard_data(self, request: web.Request) -> web.Response:
        registry = self.registry
        node_of = node_index(registry.all_workflow_versions())
        models = [model_figures(mv) for mv in registry.all_versions()
                  if id(mv) not in node_of]
        flows = []
        for entry in sorted(registry.workflows.values(), key=lambda e: e.name):  # defaults
            stats = entry.stats
            flows.append({"name": entry.name, "version": entry.version,
                          "requests": {str(k): v for k, v in sorted(stats.by_status.items())},
                          "latency": _histogram(stats.latency),
                          # a shared model's figures are all its callers'
                          "nodes": {node: model_figures(mv)
                                    for node, mv in entry.targets.items()}})
        body = {"time": time.time(), "models": models, "workflows": flows,
                "traceRingSize": self.tracer.ring.size}
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")


def add_observe_routes(router: web.UrlDispatcher, registry, tracer) -> None:
    """Register before the model routes: ``/models/{m}/traces`` would otherwise be read as
    the describe call of a version named "traces"."""
    routes = ObserveRoutes(registry, tracer)
    router.add_get("/models/{model_name}/traces", routes.model_traces)
    router.add_get("/models/{model_name}/traces/{trace_id}", routes.model_trace)
    router.add_get("/workflows/{workflow_name}/traces", routes.workflow_traces)
    router.add_get("/workflows/{workflow_name}/traces/{trace_id}", routes.workflow_trace)
    router.add_get("/workflows/{workflow_name}/graph", routes.graph)
    router.add_get("/dashboard/data", routes.dashboard_data)
    for path in DASHBOARD_FILES:
        router.add_get(path, routes.dashboard_file)


def dashboard_exempt() -> set[tuple[str, str]]:
    """The page and its static files: no data in them, so no key needed to load them."""
    return {(method, path) for path in DASHBOARD_FILES for method in ("GET", "HEAD")}
