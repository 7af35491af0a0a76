"""The JSON envelope (TensorFlow Serving's REST layout): every request's ``instances`` go to
the handler as one flat list (``{"b64": ...}`` values decoded to bytes); the outputs are cut
back per request as ``{"predictions": [...]}``."""

from __future__ import annotations

import base64
import json

from .base import BaseEnvelope, row_body


def _b64(value):
    if isinstance(value, dict) and list(value) == ["b64"]:
        return base64.b64decode(value["b64"])
    return value


class JSONEnvelope(BaseEnvelope):
    def __init__(self, handle_fn):
        super().__init__(handle_fn)
        self._lengths: list[int] = []

    def parse_input(self, data: list) -> list:
        batch: list = []
        self._lengths = []
        for row in data:
            body = row_body(row)
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            instances = body["instances"]
            items = [_b64(item) if not isinstance(item, dict) or list(item) == ["b64"]
                     else {k: _b64(v) for k, v in item.items()} for item in instances]
            self._lengths.append(len(items))
            batch.extend(items)
        return batch

    def format_output(self, data: list) -> list:
        out, pos = [], 0
        for n in self._lengths:
            out.append(json.dumps({"predictions": data[pos:pos + n]}))
            pos += n
        return out


ENVELOPE = JSONEnvelope
