"""Echo that counts its batches by size (the ``ForeachBatches`` counter, dimension
``BatchSize``), so a benchmark can report how a node's requests were batched."""

from __future__ import annotations

from typing import Any

from echo_handler import echo_row


def handle(data: list[dict] | None, context: Any) -> list[bytes] | None:
    if data is None:  # the load-time call
        return None
    context.metrics.add_counter("ForeachBatches", 1, dimensions={"BatchSize": len(data)})
    return [echo_row(row) for row in data]
