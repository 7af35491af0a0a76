"""The /workflows management endpoints (COMPAT §5), on the management app."""

from __future__ import annotations

from typing import Callable

from aiohttp import web

from ..config import Config
from ..errors import BadRequestError, ForbiddenError, MethodNotAllowedError
from ..registry import Registry
from ..workflow_manager import WorkflowManager
from .params import (bool_param, int_param, json_ok, name_param, paginate, request_params,
                     status_message)


class WorkflowRoutes:
    """``save_snapshot`` writes the snapshot before answering, so a crash right after the
    reply keeps it."""

    def __init__(self, cfg: Config, registry: Registry, manager: WorkflowManager,
                 save_snapshot: Callable[[], None]):
        self.cfg = cfg
        self.registry = registry
        self.manager = manager
        self._save_snapshot = save_snapshot

    def _check_api_enabled(self) -> None:
        if not self.cfg.enable_model_api:
            raise MethodNotAllowedError()

    async def register(self, request: web.Request) -> web.Response:
        self._check_api_enabled()
        params = await request_params(request)
        url = params.get("url")
        if not url:
            raise BadRequestError("Parameter url is required.")
        if not isinstance(url, str):
            raise BadRequestError(f"Parameter url must be a string, got {url!r}")
        bool_param(params, "synchronous", True)
        version = name_param(params, "version")
        if version == "all":
            raise BadRequestError("Parameter version cannot be 'all' (it means every version)")
        # TorchServe gives its node models this response timeout (seconds, default 120)
        timeout = int_param(params, "response_timeout", None, minimum=1)
        entry = await self.manager.register(url, name_param(params, "workflow_name"), version,
                                            response_timeout=timeout)
        self._save_snapshot()
        return status_message(f"Workflow {entry.name} has been registered and scaled "
                              "successfully." if "version" not in params else
                              f"Workflow {entry.name} version {entry.version} has been "
                              "registered and scaled successfully.")

    async def list(self, request: web.Request) -> web.Response:
        entries = sorted(self.registry.workflows.values(), key=lambda e: e.name)
        page, token = paginate(entries, request.query)
        body: dict = {} if token is None else {"nextPageToken": token}
        body["workflows"] = [{"workflowName": e.name, "workflowUrl": e.url} for e in page]
        return json_ok(body)

    async def describe(self, request: web.Request) -> web.Response:
        return json_ok(self.manager.describe(request.match_info["workflow_name"],
                                             request.match_info.get("version")))

    async def unregister(self, request: web.Request) -> web.Response:
        self._check_api_enabled()
        name = request.match_info["workflow_name"]
        version = request.match_info.get("version")
        if version is not None:
            registry = self.registry
            entry = registry.workflow(name, version)
            if registry.workflows[name] is entry and len(registry.workflow_versions(name)) > 1:
                raise ForbiddenError(f"Cannot remove default version {version} of workflow "
                                     f"{name}; set another default first")
        await self.manager.unregister(name, version)
        self._save_snapshot()
        return status_message(f"Workflow \"{name}\" unregistered" if version is None
                              else f"Workflow \"{name}\" version {version} unregistered")

    async def set_default(self, request: web.Request) -> web.Response:
        """As for models, switching the default needs no --enable-model-api."""
        name, version = request.match_info["workflow_name"], request.match_info["version"]
        self.registry.set_workflow_default(name, version)
        self.manager.models.on_change()
        self._save_snapshot()
        return status_message(f"Default version successfully updated for workflow "
                              f"\"{name}\" to \"{version}\"")

    async def scale(self, request: web.Request) -> web.Response:
        name = request.match_info["workflow_name"]
        params = await request_params(request)
        min_w = int_param(params, "min_worker")
        max_w = int_param(params, "max_worker")
        if min_w is not None and max_w is not None and max_w < min_w:
            raise BadRequestError("max_worker cannot be less than min_worker.")
        await self.manager.scale(name, min_w, max_w, request.match_info.get("version"))
        self._save_snapshot()
        return status_message(f"Workflow \"{name}\" scaled")


def add_workflow_routes(router: web.UrlDispatcher, cfg: Config, registry: Registry,
                        manager: WorkflowManager, save_snapshot: Callable[[], None]) -> None:
    routes = WorkflowRoutes(cfg, registry, manager, save_snapshot)
    router.add_post("/workflows", routes.register)
    router.add_get("/workflows", routes.list)
    router.add_get("/workflows/{workflow_name}", routes.describe)
    router.add_delete("/workflows/{workflow_name}", routes.unregister)
    router.add_put("/workflows/{workflow_name}", routes.scale)
    router.add_get("/workflows/{workflow_name}/{version}", routes.describe)
    router.add_delete("/workflows/{workflow_name}/{version}", routes.unregister)
    router.add_put("/workflows/{workflow_name}/{version}", routes.scale)
    router.add_put("/workflows/{workflow_name}/{version}/set-default", routes.set_default)
