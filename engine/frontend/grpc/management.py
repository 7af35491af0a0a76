"""TorchServe's gRPC management service (``org.pytorch.serve.grpc.management``): the six
calls, answered by the same code as the REST management API (``ManagementRoutes``), so
messages, checks and errors are the REST ones. ``msg`` is the REST answer's status message,
or its JSON (describe, list)."""

from __future__ import annotations

import json
from typing import Any

import grpc

from ...errors import DagserveError
from ..management import ManagementRoutes, routes_for
from .messages import load
from .status import abort

pb, services = load("management.proto")


class _Call:
    """What ManagementRoutes reads of an aiohttp request, filled from a gRPC message."""

    can_read_body = False
    content_type = ""

    def __init__(self, params: dict[str, Any], match_info: dict[str, str] | None = None):
        self.query = {k: v for k, v in params.items() if v not in (None, "")}
        self.match_info = match_info or {}


def _number(value: int) -> int | None:
    """proto3 has no 'not given' for numbers: 0 means the default."""
    return value or None


def _message(response) -> str:
    body = response.body.decode("utf-8") if response.body else ""
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if isinstance(payload, dict) and list(payload) == ["status"]:
        return payload["status"]
    return body


def _version(match: dict[str, str], version: str) -> dict[str, str]:
    if version:
        match["version"] = version
    return match


class ManagementService(services.ManagementAPIsServiceServicer):
    def __init__(self, routes: ManagementRoutes):
        self.routes = routes

    async def _answer(self, context, method, call: _Call):
        try:
            return pb.ManagementResponse(msg=_message(await method(call)))
        except DagserveError as exc:
            await abort(context, exc)

    async def DescribeModel(self, request, context):
        match = _version({"model_name": request.model_name}, request.model_version)
        params = {"customized": "true"} if request.customized else {}
        return await self._answer(context, self.routes.describe, _Call(params, match))

    async def ListModels(self, request, context):
        return await self._answer(context, self.routes.list, _Call(
            {"limit": _number(request.limit), "next_page_token": _number(request.next_page_token)}))

    async def RegisterModel(self, request, context):
        params = {"url": request.url, "model_name": request.model_name,
                  "handler": request.handler, "runtime": request.runtime,
                  "batch_size": _number(request.batch_size),
                  "max_batch_delay": _number(request.max_batch_delay),
                  "initial_workers": request.initial_workers,
                  "response_timeout": _number(request.response_timeout),
                  "startup_timeout": _number(request.startup_timeout),
                  "synchronous": "true" if request.synchronous else "false"}
        return await self._answer(context, self.routes.register, _Call(params))

    async def ScaleWorker(self, request, context):
        match = _version({"model_name": request.model_name}, request.model_version)
        params = {"min_worker": _number(request.min_worker),
                  "max_worker": _number(request.max_worker),
                  "synchronous": "true" if request.synchronous else "false",
                  "timeout": _number(request.timeout)}
        return await self._answer(context, self.routes.scale, _Call(params, match))

    async def SetDefault(self, request, context):
        match = {"model_name": request.model_name, "version": request.model_version}
        return await self._answer(context, self.routes.set_default, _Call({}, match))

    async def UnregisterModel(self, request, context):
        match = _version({"model_name": request.model_name}, request.model_version)
        return await self._answer(context, self.routes.unregister, _Call({}, match))


def add_to_server(server: grpc.aio.Server, runtime) -> None:
    services.add_ManagementAPIsServiceServicer_to_server(
        ManagementService(routes_for(runtime)), server)
