"""The KServe v1 envelope: the first request's ``instances`` go to the handler; the outputs
come back as ``{"predictions": [...]}`` (``{"explanations": ...}`` for an explain call)."""

from __future__ import annotations

import json

from .base import BaseEnvelope, row_body


class KServeEnvelope(BaseEnvelope):
    def parse_input(self, data: list) -> list:
        body = row_body(data[0])
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body.decode())
        return body.get("instances")

    def format_output(self, data: list) -> list:
        key = "explanations" if self._is_explain() else "predictions"
        return [{key: data}]

    def _is_explain(self) -> bool:
        return bool(self.context) and self.context.get_request_header(0, "explain") == "True"


ENVELOPE = KServeEnvelope
