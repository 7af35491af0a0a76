"""The body envelope: the handler gets each request's payload, outputs go back as they are."""

from __future__ import annotations

from .base import BaseEnvelope, row_body


class BodyEnvelope(BaseEnvelope):
    def parse_input(self, data: list) -> list:
        return [row_body(row) for row in data]

    def format_output(self, data: list) -> list:
        return data


ENVELOPE = BodyEnvelope
