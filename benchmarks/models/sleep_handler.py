"""Sleep then echo: a node that takes a fixed time per batch, so that parallel branches of a
workflow are visible in its latency (two branches of 20 and 40 ms: about 40 ms, not 60).

The delay is ``delay_ms`` in the archive's model-config.yaml (``-c`` of the archiver),
read from ``context.model_yaml_config`` at load time.
"""

from __future__ import annotations

import time
from typing import Any

from echo_handler import echo_row

_delay_s = 0.0


def handle(data: list[dict] | None, context: Any) -> list[bytes] | None:
    global _delay_s
    if data is None:  # the load-time call
        config = getattr(context, "model_yaml_config", None) or {}
        try:
            delay_ms = float(config.get("delay_ms", 0))
        except (TypeError, ValueError):
            raise ValueError(f"delay_ms in model-config.yaml must be a number, got "
                             f"{config.get('delay_ms')!r}") from None
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        _delay_s = delay_ms / 1000.0
        return None
    time.sleep(_delay_s)
    return [echo_row(row) for row in data]
