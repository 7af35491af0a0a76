"""Echo: every request of the batch gets its own input back (the cost of serving nothing).

A TorchServe function handler: ``handle(None, context)`` at load, then one call per batch.
A row's input is its ``body`` (raw body or single parent in a workflow), else its ``data``
field, else (a fan-in node with several parents) the parents' outputs joined in name order.
"""

from __future__ import annotations

import json
from typing import Any


def as_bytes(value: Any) -> bytes:
    """A decoded input value back to bytes (the server may have parsed JSON or text)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


def echo_row(row: dict) -> bytes:
    """One request's answer: its input unchanged."""
    for key in ("body", "data"):
        if key in row:
            return as_bytes(row[key])
    return b"".join(as_bytes(row[k]) for k in sorted(row))


def handle(data: list[dict] | None, context: Any) -> list[bytes] | None:
    if data is None:  # the load-time call
        return None
    return [echo_row(row) for row in data]
