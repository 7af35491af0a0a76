"""Functions of the ``shapes_router`` workflow. ``pre_processing`` checks the picture; the
shared ``shapes`` model classifies it; exactly one of ``round_shapes`` / ``angular_shapes``
runs, chosen by the ``when`` conditions of the spec over the model's answer."""

from __future__ import annotations

import json

from image_input import image_bytes
from node_output import parse_json_output

CORNERS = {"square": 4, "triangle": 3, "star": 10, "cross": 12}


def pre_processing(data: list[dict] | None, context) -> list[bytes] | None:
    if data is None:
        return None
    return [image_bytes(row, idx) for idx, row in enumerate(data)]


def _best(row: dict) -> tuple[str, float]:
    scores = parse_json_output(row.get("body"), "branch", "the classifier's answer")
    label = next(iter(scores))
    return label, scores[label]


def _answers(data: list[dict] | None, branch: str, corners) -> list[str] | None:
    """One branch's answer per request: the label, its confidence and its corners."""
    if data is None:
        return None
    out = []
    for row in data:
        label, p = _best(row)
        out.append(json.dumps({"branch": branch, "label": label, "confidence": round(p, 4),
                               "corners": corners(label)}))
    return out


def round_shapes(data: list[dict] | None, context) -> list[str] | None:
    return _answers(data, "round_shapes", lambda label: 0)


def angular_shapes(data: list[dict] | None, context) -> list[str] | None:
    return _answers(data, "angular_shapes", CORNERS.get)
