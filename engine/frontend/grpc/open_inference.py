"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), on the gRPC
inference port: the calls of frontend/v2/core.py with the protocol's messages. Inputs come
as typed ``contents`` or as ``raw_input_contents``; outputs go back as
``raw_output_contents`` (what tritonclient and KServe's clients read)."""

from __future__ import annotations

import grpc

from ...errors import DagserveError
from ...v2_tensors import encode_binary
from ..middleware import new_request_id
from ..v2.core import OpenInference, check_request
from .messages import load
from .status import abort

pb, services = load("open_inference.proto")

CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                  "INT32": "int_contents", "INT64": "int64_contents",
                  "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents",
                  "BYTES": "bytes_contents"}


def _parameter(p) -> object:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def request_payload(request) -> tuple[dict, bytes]:
    """A ModelInferRequest as the REST layout (JSON payload, binary tail)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise DagserveError(f"{len(raw)} raw_input_contents for {len(request.inputs)} "
                            "inputs (one per input expected)", 400)
    inputs = []
    for i, tensor in enumerate(request.inputs):
        item: dict = {"name": tensor.name, "datatype": tensor.datatype,
                      "shape": list(tensor.shape)}
        if raw:
            item["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            field = CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                raise DagserveError(f"input '{tensor.name}': {tensor.datatype} data must "
                                    "come in raw_input_contents", 400)
            item["data"] = list(getattr(tensor.contents, field))
        inputs.append(item)
    payload = {"inputs": inputs, "outputs": [{"name": o.name} for o in request.outputs],
               "parameters": {k: _parameter(v) for k, v in request.parameters.items()}}
    if request.id:
        payload["id"] = request.id
    return payload, b"".join(raw)


class OpenInferenceService(services.GRPCInferenceServiceServicer):
    def __init__(self, oip: OpenInference):
        self.oip = oip

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.oip.server_ready())

    async def ServerMetadata(self, request, context):
        meta = self.oip.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"],
                                         extensions=meta["extensions"])

    async def ModelReady(self, request, context):
        try:
            return pb.ModelReadyResponse(ready=self.oip.model_ready(
                request.name, request.version or None))
        except DagserveError as exc:
            await abort(context, exc)

    async def ModelMetadata(self, request, context):
        try:
            meta = self.oip.model_metadata(request.name, request.version or None)
        except DagserveError as exc:
            await abort(context, exc)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]])

    async def ModelInfer(self, request, context):
        try:
            if not request.model_name:
                raise DagserveError("model_name is required", 400)
            self.oip.check_exists(request.model_name, request.model_version or None)
            payload, binary = request_payload(request)
            req = check_request(payload, binary)
            resp = await self.oip.infer(request.model_name, request.model_version or None,
                                        req, new_request_id(), {})
        except DagserveError as exc:
            await abort(context, exc)
        out = pb.ModelInferResponse(model_name=resp["model_name"],
                                    model_version=resp["model_version"] or "",
                                    id=resp["id"] or "")
        for t in resp["outputs"]:
            out.outputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            out.raw_output_contents.append(encode_binary(t["datatype"], t["data"]))
        return out


def add_to_server(server: grpc.aio.Server, oip: OpenInference) -> None:
    services.add_GRPCInferenceServiceServicer_to_server(OpenInferenceService(oip), server)
