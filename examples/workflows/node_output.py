"""Reading what an earlier node of a workflow returned: the example workflows ship this file
as an extra file of their .war, so every function node parses its parents the same way."""

from __future__ import annotations

import json
from typing import Any

from ts.utils.util import PredictionException


def parse_json_output(value: Any, where: str, what: str = "output") -> Any:
    """A parent's output (bytes, text, or already parsed) as parsed JSON; a 502 that names
    ``where`` and ``what`` when it is not JSON."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise PredictionException(f"{where}: {what} is not JSON: {value[:200]!r}",
                                      502) from None
    return value
