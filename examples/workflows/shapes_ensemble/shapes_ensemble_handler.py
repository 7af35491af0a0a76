"""Functions of the ``shapes_ensemble`` workflow:
pre_processing -> {classifier_a, classifier_b} -> aggregate.

TorchServe's function-handler contract: ``fn(data, context)`` gets one dict per request and
returns a list of the same length; it is called once with ``data=None`` at start.

- ``pre_processing`` checks that the request holds an image (body, form field ``data``, or
  base64 text) and passes its bytes to both classifiers.
- each classifier answers with its probability for every class, JSON ``{label: p}``.
- ``aggregate`` has two parents, so it receives ``{"classifier_a": bytes, "classifier_b":
  bytes}`` per request; it averages the distributions (any number of parents works) and
  answers ``{"label", "confidence", "probabilities": {label: p, ...}, "votes": {...}}``,
  the probabilities summing to 1, most likely first.
"""

from __future__ import annotations

import math

from ts.utils.util import PredictionException

from image_input import image_bytes
from node_output import parse_json_output

#: How far from 1 a classifier's probabilities may sum: more means it left classes out.
SUM_TOLERANCE = 1e-3


def pre_processing(data: list[dict] | None, context) -> list[bytes] | None:
    """Validate each request's image and pass its bytes to both classifiers."""
    if data is None:
        return None
    return [image_bytes(row, idx) for idx, row in enumerate(data)]


def _distribution(value, where: str) -> dict[str, float]:
    """One classifier's output as ``{label: probability}``, checked to be a whole
    distribution (every class, summing to 1)."""
    value = parse_json_output(value, where)
    if (not isinstance(value, dict) or not value
            or not all(isinstance(p, (int, float)) and not isinstance(p, bool)
                       and math.isfinite(p) and p >= 0 for p in value.values())):
        raise PredictionException(f"{where}: expected a JSON object {{label: probability}}, "
                                  f"got {str(value)[:200]!r}", 502)
    total = math.fsum(value.values())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise PredictionException(
            f"{where}: probabilities sum to {total:.4f}, not 1: the model returns only its "
            f"top classes; configure its handler to return every class (model-config.yaml: "
            f"handler: topk: <number of classes>)", 502)
    return {str(label): float(p) for label, p in value.items()}


def _average(row: dict, idx: int) -> dict:
    if not isinstance(row, dict) or not row:
        raise PredictionException(f"request {idx}: aggregate needs its parents' outputs "
                                  f"({{node name: output}}), got {type(row).__name__}", 500)
    parents = sorted(row)
    distributions = {name: _distribution(row[name], f"request {idx}: {name}")
                     for name in parents}
    labels = set(distributions[parents[0]])
    for name in parents[1:]:
        if set(distributions[name]) != labels:
            raise PredictionException(
                f"request {idx}: {parents[0]} and {name} do not know the same classes "
                f"({sorted(labels)} vs {sorted(distributions[name])})", 502)
    mean = {label: math.fsum(d[label] for d in distributions.values()) / len(parents)
            for label in labels}
    total = math.fsum(mean.values())  # within SUM_TOLERANCE of 1; make it exact
    probabilities = dict(sorted(((label, p / total) for label, p in mean.items()),
                                key=lambda item: (-item[1], item[0])))
    best = next(iter(probabilities))
    votes = {name: max(d, key=d.__getitem__) for name, d in distributions.items()}
    return {"label": best, "confidence": probabilities[best],
            "probabilities": probabilities, "votes": votes}


def aggregate(data: list[dict] | None, context) -> list[dict] | None:
    """Average the parents' class probabilities, request by request."""
    if data is None:
        return None
    return [_average(row, idx) for idx, row in enumerate(data)]
