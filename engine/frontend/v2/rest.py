"""The Open Inference Protocol's REST routes on the inference port:

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{m}[/versions/{v}]``,
``.../ready``, ``POST .../infer`` (and ``.../explain``, as TorchServe has it). Request and response bodies are JSON, or JSON followed by
binary tensor data (the binary tensor extension: ``Inference-Header-Content-Length`` says
where the JSON ends; ``binary_data_size`` per tensor). Every error is the protocol's
``{"error": "..."}`` with its HTTP status.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Awaitable, Callable

from aiohttp import web

from ...errors import BadRequestError, DagserveError
from ...v2_tensors import encode_binary
from .core import OpenInference, check_request

HEADER_LENGTH = "Inference-Header-Content-Length"
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
JSON_HEADERS = {"Content-Type": "application/json"}


def v2_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}).encode(),
                        content_type="application/json")


def _json(payload: Any) -> web.Response:
    return web.Response(body=json.dumps(payload).encode(), content_type="application/json")


def _wants_binary(req: dict) -> dict[str, bool]:
    default = bool(req["parameters"].get("binary_data_output", False))
    wanted = {}
    for out in req["outputs"]:
        params = out.get("parameters") or {}
        wanted[out["name"]] = bool(params.get("binary_data", default))
    return {"*": default, **wanted}


def encode_response(resp: dict, req: dict) -> web.Response:
    """JSON, or JSON then binary data for the outputs asked for in binary."""
    binary = _wants_binary(req)
    blobs: list[bytes] = []
    outputs = []
    for t in resp["outputs"]:
        out: dict = {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]}
        if binary.get(t["name"], binary["*"]):
            blob = encode_binary(t["datatype"], t["data"])
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif t["datatype"] == "BYTES":
            out["data"] = [x.decode("utf-8", "replace") for x in t["data"]]
        else:
            out["data"] = t["data"]
        outputs.append(out)
    header = json.dumps({"model_name": resp["model_name"], "model_version":
                         resp["model_version"], "id": resp["id"],
                         "outputs": outputs}).encode()
    if not blobs:
        return web.Response(body=header, content_type="application/json")
    return web.Response(body=b"".join([header, *blobs]),
                        headers={HEADER_LENGTH: str(len(header)),
                                 "Content-Type": "application/octet-stream"})


def _protocol_errors(handler: Handler) -> Handler:
    async def run(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except DagserveError as exc:
            return v2_error(exc.status, exc.message)
    return run


class V2Routes:
    def __init__(self, oip: OpenInference):
        self.oip = oip

    def resolve(self, method: str, parts: list[str]) -> Handler | None:
        """``parts``: the path split on '/' (``['', 'v2', ...]``); None: no such route."""
        n = len(parts)
        if n == 2:
            return self._get(method, self.server_metadata)
        if n == 4 and parts[2] == "health" and parts[3] in ("live", "ready"):
            return self._get(method, self.live if parts[3] == "live" else self.ready)
        if n < 4 or parts[2] != "models" or not parts[3]:
            return None
        name, rest = parts[3], parts[4:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
            version, rest = rest[1], rest[2:]
        if not rest:
            return self._get(method, partial(self.model_metadata, name=name, version=version))
        if rest == ["ready"]:
            return self._get(method, partial(self.model_ready, name=name, version=version))
        if rest == ["infer"] or rest == ["explain"]:
            if method != "POST":
                return _protocol_errors(_not_allowed)
            return _protocol_errors(partial(self.infer, name=name, version=version,
                                            explain=rest[0] == "explain"))
        return None

    @staticmethod
    def _get(method: str, handler: Handler) -> Handler:
        return _protocol_errors(handler if method in ("GET", "HEAD") else _not_allowed)

    async def server_metadata(self, request: web.BaseRequest) -> web.Response:
        return _json(self.oip.server_metadata())

    async def live(self, request: web.BaseRequest) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.BaseRequest) -> web.Response:
        ready = self.oip.server_ready()
        return web.Response(status=200 if ready else 503, content_type="application/json",
                            body=json.dumps({"ready": ready}).encode())

    async def model_metadata(self, request: web.BaseRequest, name: str,
                             version: str | None) -> web.Response:
        return _json(self.oip.model_metadata(name, version))

    async def model_ready(self, request: web.BaseRequest, name: str,
                          version: str | None) -> web.Response:
        ready = self.oip.model_ready(name, version)
        return web.Response(status=200 if ready else 503, content_type="application/json",
                            body=json.dumps({"name": name, "ready": ready}).encode())

    async def infer(self, request: web.BaseRequest, name: str, version: str | None,
                    explain: bool = False) -> web.Response:
        """``.../infer``; ``.../explain`` is the same call with the ``explain`` header that
        TorchServe's handlers look at."""
        self.oip.check_exists(name, version)  # 404 before reading the body
        body = await request.read()
        length = request.headers.get(HEADER_LENGTH)
        if length is not None:
            if not length.isdigit() or int(length) > len(body):
                raise BadRequestError(f"{HEADER_LENGTH} {length!r} is not a length within "
                                      f"the {len(body)}-byte body")
            header, binary = body[:int(length)], body[int(length):]
        else:
            header, binary = body, b""
        try:
            payload = json.loads(header)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
        req = check_request(payload, binary)
        headers = dict(request.headers)
        headers.pop(HEADER_LENGTH, None)
        headers["explain"] = "True" if explain else "False"
        as_sent = not any(_wants_binary(req).values())
        resp = await self.oip.infer(name, version, req, request["request_id"], headers,
                                    body=None if binary else header, as_sent=as_sent)
        if "raw" in resp:  # the model's v2 JSON as its envelope made it
            return web.Response(body=resp["raw"], headers=JSON_HEADERS)
        return encode_response(resp, req)


async def _not_allowed(request: web.BaseRequest) -> web.Response:
    return v2_error(405, f"{request.method} is not allowed on {request.path}")
