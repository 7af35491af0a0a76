"""The KServe v2 (Open Inference Protocol) envelope.

The handler gets what TorchServe's kservev2 envelope gives it: a list with one dict per
input tensor, ``{"name", "shape", "datatype", "data"}``, ``data`` reshaped to ``shape``
(nested lists), and for BYTES the first element (a string; bytes when it is not UTF-8).
It returns one output per input; output ``i`` is named after input ``i`` and becomes a
tensor with the datatype of its values. Each request's answer is the v2 response as JSON
bytes. With a batch of several requests, their inputs
are concatenated and the outputs cut back per request (TorchServe reads only the first).
``context.input_names`` holds the names of the inputs, as in TorchServe.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ...v2_tensors import flatten, reshape, to_tensor
from .base import BaseEnvelope, row_body

def _element(value: Any) -> Any:
    if isinstance(value, dict) and list(value) == ["b64"]:
        return base64.b64decode(value["b64"])
    return value


_encode_json = json.JSONEncoder(separators=(",", ":"), default=lambda o: o.tolist()).encode


def _encode(response: dict) -> bytes:
    return _encode_json(response).encode("utf-8")


class KServev2Envelope(BaseEnvelope):
    def __init__(self, handle_fn):
        super().__init__(handle_fn)
        self._rows: list[tuple[str | None, list[str]]] = []  # (request id, input names)

    def parse_input(self, data: list) -> list:
        inputs: list = []
        self._rows = []
        for row in data:
            body = row_body(row)
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(bytes(body).decode("utf-8"))
            names = []
            for tensor in body["inputs"]:
                flat = [_element(x) for x in flatten(tensor["data"])]
                if tensor["datatype"] == "BYTES":
                    value = flat[0] if flat else b""
                else:
                    value = reshape(flat, tensor["shape"])
                inputs.append({"name": tensor["name"], "shape": tensor["shape"],
                               "datatype": tensor["datatype"], "data": value})
                names.append(tensor["name"])
            request_id = body.get("id")
            self._rows.append((request_id if isinstance(request_id, str)
                               and request_id.strip() else None, names))
        all_names = [n for _, names in self._rows for n in names]
        setattr(self.context, "input_names", all_names)
        return inputs

    def format_output(self, data: list) -> list:
        manifest_model = (self.context.manifest or {}).get("model") or {}
        out, pos = [], 0
        for idx, (request_id, names) in enumerate(self._rows):
            n = len(names) if idx < len(self._rows) - 1 else len(data) - pos
            items = data[pos:pos + n]
            pos += n
            tensors = [to_tensor(names[i] if i < len(names) else f"output-{i}", item)
                       for i, item in enumerate(items)]
            # encoded here: compact JSON by the C encoder (the service's pretty-printing
            # encoder costs several times more on every v2 request)
            out.append(_encode({"id": request_id or self.context.get_request_id(idx),
                                "model_name": manifest_model.get("modelName") or
                                self.context.model_name,
                                "model_version": manifest_model.get("modelVersion"),
                                "outputs": tensors}))
        if hasattr(self.context, "input_names"):
            delattr(self.context, "input_names")
        return out


ENVELOPE = KServev2Envelope
