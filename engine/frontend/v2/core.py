"""What an Open Inference Protocol call does, whatever the transport: health, metadata,
readiness, and infer on a model (its handler sees TorchServe's kservev2 envelope view) or
on a workflow (the inputs by name to its start node, each response node's output as an
output tensor named after the node).

A request or response here is a plain dict of the protocol's JSON layout, with every
tensor's ``data`` a flat list and BYTES elements as ``bytes``.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Awaitable, Callable

from ...errors import BadRequestError, DagserveError, InternalServerError, ModelNotFoundError
from ...handler.service import V2_HEADER
from ...messages import Param, Request, Response
from ...models import SERVER_VERSION
from ...registry import Registry
from ...v2_tensors import (TensorError, check_data, check_header, decode_binary, flatten,
                           reshape, to_tensor)
from ...workers.stream import ResultStream
from ..submit import submit_to_model

WorkflowRunner = Callable[[str, Request], Awaitable[Response]]
EXTENSIONS = ["binary_tensor_data", "dagserve_workflows"]


def _bad(message: str) -> BadRequestError:
    return BadRequestError(message)


def check_request(payload: Any, binary: bytes = b"") -> dict:
    """A v2 infer request (parsed JSON; ``binary``: the binary extension's tail), checked,
    with every input's data flat. Raises BadRequestError saying what is wrong."""
    if not isinstance(payload, dict):
        raise _bad("the request must be a JSON object")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("the request has no 'inputs' (a non-empty list of tensors)")
    pos = 0
    checked = []
    try:
        for tensor in inputs:
            name, datatype, shape = check_header(tensor)
            params = tensor.get("parameters") or {}
            size = params.get("binary_data_size") if isinstance(params, dict) else None
            if size is not None:
                if not isinstance(size, int) or size < 0 or pos + size > len(binary):
                    raise TensorError(f"input '{name}': binary_data_size {size!r} does not "
                                      f"fit the {len(binary) - pos} binary bytes left")
                data = decode_binary(name, datatype, shape, binary[pos:pos + size])
                pos += size
            else:
                if "data" not in tensor:
                    raise TensorError(f"input '{name}' has no data")
                data = check_data(name, datatype, shape, flatten(tensor["data"]))
            checked.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    except TensorError as exc:
        raise _bad(str(exc)) from None
    if pos != len(binary):
        raise _bad(f"{len(binary) - pos} binary bytes follow the inputs unused")
    outputs = payload.get("outputs") or []
    if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise _bad("'outputs' must be a list of objects with a name")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("'id' must be a string")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad("'parameters' must be an object")
    return {"id": request_id, "parameters": parameters, "inputs": checked,
            "outputs": outputs}


def _json_element(item: Any) -> Any:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(item).decode()}
    return item


def envelope_body(req: dict) -> bytes:
    """The request as the kservev2 envelope reads it (JSON; non-UTF-8 BYTES as b64)."""
    inputs = [{"name": t["name"], "datatype": t["datatype"], "shape": t["shape"],
               "data": [_json_element(x) for x in t["data"]]} for t in req["inputs"]]
    body: dict = {"inputs": inputs}
    if req.get("id"):
        body["id"] = req["id"]
    return json.dumps(body, separators=(",", ":")).encode()


def _outputs_from_model(value: bytes) -> tuple[str | None, list[dict]]:
    try:
        out = json.loads(value)
        tensors = []
        for tensor in out["outputs"]:
            name, datatype, shape = check_header(tensor, "output")
            data = flatten(tensor.get("data", []))
            if datatype == "BYTES":
                data = [x.encode("utf-8") if isinstance(x, str) else
                        json.dumps(x).encode() for x in data]
            tensors.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
        return out.get("id"), tensors
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise InternalServerError(f"the model's output is not a v2 response ({exc}); does "
                                  "its handler return one output per input?") from None


def _outputs_from_bytes(name: str, value: bytes) -> dict:
    try:
        parsed = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return {"name": name, "datatype": "BYTES", "shape": [1], "data": [value]}
    tensor = to_tensor(name, parsed)
    if tensor["datatype"] == "BYTES":
        tensor["data"] = [x.encode("utf-8") for x in tensor["data"]]
    return tensor


class OpenInference:
    """The protocol's calls against the registry (models) and the workflow runner."""

    def __init__(self, registry: Registry, run_workflow: WorkflowRunner | None):
        self.registry = registry
        self.run_workflow = run_workflow

    # -- health and metadata ---------------------------------------------------------

    def server_ready(self) -> bool:
        return all(mv.pool.ready_count >= mv.min_workers for mv in self.registry.all_versions())

    @staticmethod
    def server_metadata() -> dict:
        return {"name": "dagserve", "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def check_exists(self, name: str, version: str | None) -> None:
        """404 (ModelNotFoundError) unless ``name`` is a model (version) or a workflow."""
        self._model(name, version)

    def _model(self, name: str, version: str | None):
        """The model version, or None for a workflow (a model of the name wins)."""
        try:
            return self.registry.get(name, version)
        except DagserveError:
            if name in self.registry.workflows:
                self.registry.workflow(name, version)  # 404 for a version it does not have
                return None
            raise ModelNotFoundError(f"Model not found: {name}" if version is None else
                                     f"Model version {version} not found for model {name}")

    def model_ready(self, name: str, version: str | None) -> bool:
        mv = self._model(name, version)
        if mv is None:
            entry = self.registry.workflow(name, version)
            return all(m.pool.ready_count > 0 for m in entry.targets.values())
        return mv.pool.ready_count > 0

    def model_metadata(self, name: str, version: str | None) -> dict:
        mv = self._model(name, version)
        if mv is None:
            entry = self.registry.workflow(name, version)
            return {"name": name,
                    "versions": [e.version for e in self.registry.workflow_versions(name)],
                    "platform": "dagserve_workflow", "inputs": [],
                    "outputs": [{"name": leaf, "datatype": "BYTES", "shape": [-1]}
                                for leaf in entry.compiled.leaves]}
        return {"name": mv.name, "versions": [m.version for m in self.registry.versions(name)],
                "platform": "pytorch_torchserve", "inputs": [], "outputs": []}

    # -- infer -----------------------------------------------------------------------

    async def infer(self, name: str, version: str | None, req: dict, request_id: str,
                    headers: dict[str, str], *, body: bytes | None = None,
                    as_sent: bool = False) -> dict:
        """Run a checked request (see :func:`check_request`); the response dict.
        ``headers`` (the request's, a dict of its own) go to the handler.

        ``body``: the request's own JSON, when the envelope can read it as it is (no
        binary data). ``as_sent``: a model's v2 JSON may come back unparsed, as ``{"raw":
        bytes}`` (TorchServe returns the envelope's output as it is), when no outputs were
        asked for by name."""
        mv = self._model(name, version)
        if mv is None:
            model_version = self.registry.workflow(name, version).version
            outputs = await self._infer_workflow(name, model_version, req, request_id, headers)
            out_id = None
        else:
            headers[V2_HEADER] = "1"
            request = Request(request_id, [Param("body", "application/json",
                                                 body or envelope_body(req))], headers)
            resp = await submit_to_model(mv, request)
            if resp.__class__ is ResultStream:
                resp = await resp.collect()
            _raise_for(resp)
            if as_sent and not req["outputs"]:
                return {"raw": resp.value}
            out_id, outputs = _outputs_from_model(resp.value)
            name, model_version = mv.name, mv.version
        wanted = [o["name"] for o in req["outputs"]]
        if wanted:
            by_name = {t["name"]: t for t in outputs}
            missing = [w for w in wanted if w not in by_name]
            if missing:
                raise _bad(f"unknown output {missing[0]!r}; the outputs are "
                           f"{', '.join(by_name) or 'none'}")
            outputs = [by_name[w] for w in wanted]
        return {"model_name": name, "model_version": model_version,
                "id": req.get("id") or out_id or request_id, "outputs": outputs}

    async def _infer_workflow(self, name: str, version: str, req: dict, request_id: str,
                              headers: dict[str, str]) -> list[dict]:
        if self.run_workflow is None:
            raise ModelNotFoundError(f"Model not found: {name}")
        params = []
        for t in req["inputs"]:
            if t["datatype"] == "BYTES" and len(t["data"]) == 1:
                params.append(Param(t["name"], None, t["data"][0]))
            else:
                value = reshape([_json_element(x) for x in t["data"]], t["shape"])
                params.append(Param(t["name"], "application/json", json.dumps(value).encode()))
        resp = await self.run_workflow(name, Request(request_id, params, dict(headers)),
                                       version)
        if resp.__class__ is ResultStream:
            resp = await resp.collect()
        _raise_for(resp)
        leaves = list(self.registry.workflow(name, version).compiled.leaves)
        if len(leaves) == 1:
            return [_outputs_from_bytes(leaves[0], resp.value)]
        try:  # several response nodes: {node: output}
            merged = json.loads(resp.value)
        except (ValueError, UnicodeDecodeError):
            merged = None
        if not isinstance(merged, dict):
            return [_outputs_from_bytes(name, resp.value)]
        return [_outputs_from_bytes(node, json.dumps(value).encode())
                for node, value in merged.items()]


def _raise_for(resp: Response) -> None:
    if resp.code >= 400:
        message = resp.message or resp.value.decode("utf-8", "replace") or "Prediction failed"
        raise DagserveError(message, resp.code)
