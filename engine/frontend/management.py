"""The management API (default 127.0.0.1:8081), TorchServe 0.12's: register, scale,
describe, unregister and list models, set a default version; ``/token`` when token
authorization is on; the ``/workflows`` routes (workflow_routes.py).

Messages and JSON layouts are TorchServe's. Where dagserve is stricter (a parameter that is
not a number is a 400 naming it, instead of silently taking the default) the message says
what is wrong.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from ..auth import token_handler
from ..config import Config

from ..errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InternalServerError,
    MethodNotAllowedError,
    ModelNotFoundError,
)
from ..models import SERVER_VERSION, ModelManager, ModelOptions
from ..registry import ModelVersion, Registry
from ..tasks import TaskOwner
from ..shared_models import workflows_using
from ..workers.process import WorkerStartError
from ..workers.ray_placement import ray_param
from .params import (
    bool_param,
    int_param,
    json_ok,
    name_param,
    paginate,
    request_params,
    status_message,
)
from .customized import customized_metadata
from .observe_routes import add_observe_routes
from .workflow_routes import add_workflow_routes

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("dagserve.management")

RUNTIMES = ("python", "python3")


class ModelVersionNotFoundError(ModelNotFoundError):
    type_name = "ModelVersionNotFoundException"


def memory_usage(pid: int | None) -> int:
    """Resident memory of a process in bytes (VmRSS), 0 when it cannot be read."""
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def ray_node(worker: Any) -> str | None:
    """The Ray node id of a worker that is a Ray actor (workers/ray_worker.py), else None."""
    return getattr(worker, "node_id", None)


def iso_time(ts: float) -> str:
    """TorchServe's worker start time: ``2024-05-01T10:11:12.345Z``."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _str_param(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"Parameter {name} must be a string, got {value!r}")
    return value


class ManagementRoutes:
    """``persist`` writes the snapshot of a change before the API answers (SIGKILL-safe);
    ``tasks`` runs what a client asked not to wait for (``synchronous=false``)."""

    def __init__(self, cfg: Config, registry: Registry, models: ModelManager,
                 tasks: TaskOwner, persist: Callable[[], None]):
        self.cfg = cfg
        self.registry = registry
        self.models = models
        self.tasks = tasks
        self._persist = persist

    def _check_model_api(self) -> None:
        if not self.cfg.enable_model_api:
            raise MethodNotAllowedError()

    def _changed(self) -> None:
        self.models.on_change()

    # -- register ----------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        self._check_model_api()
        params = await request_params(request)
        url = params.get("url")
        if url is None or url == "":
            raise BadRequestError("Parameter url is required.")
        if not isinstance(url, str):
            raise BadRequestError(f"Parameter url must be a string, got {url!r}")
        name = name_param(params, "model_name")
        runtime = _str_param(params, "runtime")
        if runtime is not None and runtime not in RUNTIMES:
            raise BadRequestError(f"Parameter runtime must be one of {', '.join(RUNTIMES)}, "
                                  f"got {runtime!r}")
        default_workers = self.cfg.default_workers_per_model or None
        opts = ModelOptions(
            model_name=name,
            handler=_str_param(params, "handler"),
            batch_size=int_param(params, "batch_size", None, minimum=1),
            max_batch_delay=int_param(params, "max_batch_delay", None, minimum=0),
            initial_workers=int_param(params, "initial_workers", default_workers, minimum=0),
            response_timeout=int_param(params, "response_timeout", None, minimum=1),
            startup_timeout=int_param(params, "startup_timeout", None, minimum=1),
            ray=ray_param(_str_param(params, "ray")))
        synchronous = bool_param(params, "synchronous", True)
        mv = await self.models.register(url, opts, synchronous=synchronous)
        if synchronous:
            self._persist()
        if mv.min_workers == 0:
            return status_message(
                f"Model \"{mv.name}\" Version: {mv.version} registered with 0 initial workers. "
                "Use scale workers API to add workers for the model.")
        if not synchronous:
            return status_message("Processing worker updates...", 202)
        return status_message(f"Model \"{mv.name}\" Version: {mv.version} registered with "
                              f"{mv.min_workers} initial workers")

    # -- scale -------------------------------------------------------------------------

    async def scale(self, request: web.Request) -> web.Response:
        name = request.match_info["model_name"]
        params = await request_params(request)
        version = request.match_info.get("version") or _str_param(params, "model_version")
        min_workers = int_param(params, "min_worker", 1, minimum=0)
        max_workers = int_param(params, "max_worker", min_workers, minimum=0)
        assert min_workers is not None and max_workers is not None
        if max_workers < min_workers:
            raise BadRequestError("max_worker cannot be less than min_worker.")
        synchronous = bool_param(params, "synchronous", False)
        # TorchServe's drain timeout for workers being stopped: validated and accepted; the
        # pool stops idle workers first.
        int_param(params, "timeout", -1, minimum=-1)
        mv = self.registry.get(name, version)
        if mv.owner is not None:
            raise ConflictError(f"Model {name} belongs to workflow {mv.owner}; scale the "
                                f"workflow instead (PUT /workflows/{mv.owner})")
        if not synchronous:
            self.tasks.spawn(self._scale, mv, min_workers, max_workers,
                             name=f"scaling {mv.name} {mv.version}")
            return status_message("Processing worker updates...", 202)
        await self._scale(mv, min_workers, max_workers)
        self._persist()
        message = f"Workers scaled to {min_workers} for model: {name}"
        if version is not None:
            message += f", version: {version}"
        return status_message(message)

    async def _scale(self, mv: ModelVersion, min_workers: int, max_workers: int) -> None:
        try:
            await self.models.scale(mv, min_workers, max_workers)
        except (WorkerStartError, OSError) as exc:
            log.error("scaling %s version %s failed: %s", mv.name, mv.version, exc)
            raise InternalServerError(f"Failed to start workers for model {mv.name} "
                                      f"version: {mv.version}") from None

    # -- describe / list ---------------------------------------------------------------

    def _describe_one(self, mv: ModelVersion) -> dict[str, Any]:
        gpu = bool(getattr(mv.pool.devices, "gpu_count", 0))
        workers = [{"id": w.id, "startTime": iso_time(w.start_time),
                    "status": "READY" if w.alive and w.status == "READY" else w.status,
                    # a Ray worker's pid is a process on its Ray node, maybe another host
                    "memoryUsage": 0 if ray_node(w) else memory_usage(w.pid),
                    "pid": w.pid if w.pid else -1, "gpu": w.gpu_id is not None,
                    "gpuUsage": "N/A", **({"rayNode": ray_node(w)} if ray_node(w) else {})}
                   for w in list(mv.pool.workers) if w.alive]
        return {
            "modelName": mv.name, "modelVersion": mv.version, "modelUrl": mv.url,
            "runtime": mv.runtime, "minWorkers": mv.min_workers, "maxWorkers": mv.max_workers,
            "batchSize": mv.batch_size, "maxBatchDelay": mv.max_batch_delay,
            "responseTimeout": mv.response_timeout, "startupTimeout": mv.startup_timeout,
            "deviceType": "gpu" if gpu else "cpu", "loadedAtStartup": mv.loaded_at_startup,
            "workers": workers,
            "jobQueueStatus": {"remainingCapacity": max(0, mv.queue.capacity - mv.queue.pending),
                               "pendingRequests": mv.queue.pending},
        }

    async def describe(self, request: web.Request) -> web.Response:
        name = request.match_info["model_name"]
        version = request.match_info.get("version")
        if version == "all":
            found = self.registry.versions(name)
        else:
            found = [self.registry.get(name, version)]
        described = [self._describe_one(mv) for mv in found]
        if bool_param(request.query, "customized", False):
            for entry, mv in zip(described, found):
                entry["customizedMetadata"] = await customized_metadata(mv)
        return json_ok(described)

    async def list(self, request: web.Request) -> web.Response:
        listed = []
        for name in self.registry.names():
            mv = self.registry.get(name)
            if mv.owner is not None and not getattr(mv, "owns_dir", True):
                continue  # a workflow's function node: not a model of its own (as TorchServe)
            listed.append(mv)
        page, token = paginate(listed, request.query)
        body: dict[str, Any] = {}
        if token is not None:
            body["nextPageToken"] = token
        body["models"] = [{"modelName": mv.name, "modelUrl": mv.url} for mv in page]
        return json_ok(body)

    # -- unregister / default version --------------------------------------------------

    async def unregister(self, request: web.Request) -> web.Response:
        self._check_model_api()
        name = request.match_info["model_name"]
        version = request.match_info.get("version")
        mv = self.registry.get(name, version)
        if mv.owner is not None:
            raise ConflictError(f"Model {name} belongs to workflow {mv.owner}; unregister "
                                f"the workflow instead (DELETE /workflows/{mv.owner})")
        if mv.version == self.registry.default_version(name) and \
                len(self.registry.versions(name)) > 1:
            raise ForbiddenError(f"Cannot remove default version for model {name}")
        users = workflows_using(self.registry, mv)
        if users:
            raise ConflictError(f"Model {name} version {mv.version} is used by workflow(s) "
                                f"{', '.join(users)} (model: nodes); unregister them first")
        await self.models.unregister(name, mv.version)
        self._persist()
        return status_message(f"Model \"{name}\" unregistered")

    async def set_default(self, request: web.Request) -> web.Response:
        name = request.match_info["model_name"]
        version = request.match_info["version"]
        if version not in {mv.version for mv in self.registry.versions(name)}:
            raise ModelVersionNotFoundError(
                f"Model version {version} does not exist for model {name}")
        self.registry.set_default(name, version)
        self._changed()
        self._persist()
        return status_message(f"Default version successfully updated for model \"{name}\" "
                              f"to \"{version}\"")

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(body=management_openapi(), content_type="application/json")


def management_openapi() -> bytes:
    """A short OpenAPI description of this API (TorchServe's ``OPTIONS /``)."""

    def op(summary: str, path_params: list[str], query: list[str] = ()) -> dict:
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in path_params]
        params += [{"name": q, "in": "query", "required": False,
                    "schema": {"type": "string"}} for q in query]
        return {"summary": summary, "parameters": params,
                "responses": {"200": {"description": "OK"}}}

    register = ["url", "model_name", "handler", "runtime", "batch_size", "max_batch_delay",
                "initial_workers", "synchronous", "response_timeout", "startup_timeout", "ray"]
    scale = ["min_worker", "max_worker", "synchronous", "timeout"]
    paths = {
        "/": {"options": op("Get the API description", [])},
        "/models": {"get": op("List models", [], ["limit", "next_page_token"]),
                    "post": op("Register a model", [], register)},
        "/models/{model_name}": {
            "get": op("Describe the default version", ["model_name"]),
            "put": op("Scale workers of the default version", ["model_name"], scale),
            "delete": op("Unregister the default version", ["model_name"])},
        "/models/{model_name}/{model_version}": {
            "get": op("Describe a version ('all': every version)",
                      ["model_name", "model_version"]),
            "put": op("Scale workers of a version", ["model_name", "model_version"], scale),
            "delete": op("Unregister a version", ["model_name", "model_version"])},
        "/models/{model_name}/{model_version}/set-default": {
            "put": op("Make a version the default", ["model_name", "model_version"])},
        "/workflows": {"get": op("List workflows", [], ["limit", "next_page_token"]),
                       "post": op("Register a workflow", [],
                                  ["url", "workflow_name", "synchronous"])},
        "/workflows/{workflow_name}": {
            "get": op("Describe a workflow", ["workflow_name"]),
            "put": op("Scale the workers of its nodes", ["workflow_name"],
                      ["min_worker", "max_worker"]),
            "delete": op("Unregister a workflow", ["workflow_name"])},
    }
    doc = {"openapi": "3.0.1",
           "info": {"title": "dagserve management API", "version": SERVER_VERSION,
                    "description": "TorchServe-compatible management API"},
           "paths": paths}
    return json.dumps(doc, indent=2).encode()


def routes_for(runtime) -> ManagementRoutes:
    """The management calls over a runtime (the REST app's and the gRPC service's)."""
    return ManagementRoutes(runtime.cfg, runtime.registry, runtime.models, runtime.tasks,
                            runtime.persist)


def build_management_app(runtime: Runtime, middlewares: list) -> web.Application:
    routes = routes_for(runtime)
    app = web.Application(middlewares=middlewares, client_max_size=runtime.cfg.max_request_size)
    r = app.router
    r.add_route("OPTIONS", "/", routes.options)
    r.add_get("/api-description", routes.options)
    r.add_get("/models", routes.list)
    r.add_post("/models", routes.register)
    add_observe_routes(r, runtime.registry, runtime.tracer)
    r.add_get("/models/{model_name}", routes.describe)
    r.add_put("/models/{model_name}", routes.scale)
    r.add_delete("/models/{model_name}", routes.unregister)
    r.add_get("/models/{model_name}/{version}", routes.describe)
    r.add_put("/models/{model_name}/{version}", routes.scale)
    r.add_delete("/models/{model_name}/{version}", routes.unregister)
    r.add_put("/models/{model_name}/{version}/set-default", routes.set_default)
    if runtime.keys is not None:
        token = token_handler(runtime.keys)
        r.add_get("/token", token)
        r.add_post("/token", token)
    add_workflow_routes(r, runtime.cfg, runtime.registry, runtime.workflows, runtime.persist)
    return app
