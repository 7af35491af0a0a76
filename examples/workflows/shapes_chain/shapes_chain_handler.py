"""Functions of the ``shapes_chain`` workflow: pre_processing -> classifier -> post_processing.

Workflow functions follow TorchServe's function-handler contract: ``fn(data, context)`` gets
a list with one dict per request of the batch and returns a list of the same length. Each is
called once with ``data=None`` when its worker starts (nothing to do then).

- ``pre_processing`` (the start node) receives the request as sent: an image in the body, or
  in a form field named ``data``; a ``text/plain`` body is read as base64 of the image. It
  decodes the image with Pillow to make sure it is one, and passes the image bytes on.
- the ``classifier`` model (built-in ``image_classifier`` handler) answers with its top
  classes as JSON ``{"circle": 0.998, "heart": 0.001, ...}``.
- ``post_processing`` turns that into ``{"label": "circle", "confidence": 0.998}``.
"""

from __future__ import annotations


from ts.utils.util import PredictionException

from image_input import image_bytes
from node_output import parse_json_output


def pre_processing(data: list[dict] | None, context) -> list[bytes] | None:
    """Validate each request's image and pass its bytes to the classifier."""
    if data is None:
        return None
    return [image_bytes(row, idx) for idx, row in enumerate(data)]


def _scores(value, where: str) -> dict[str, float]:
    """A classifier's output (JSON ``{label: probability}``, as bytes, text or parsed)."""
    value = parse_json_output(value, where, "the classifier's output")
    if (not isinstance(value, dict) or not value
            or not all(isinstance(p, (int, float)) and not isinstance(p, bool)
                       for p in value.values())):
        raise PredictionException(f"{where}: expected the classifier's JSON object "
                                  f"{{label: probability}}, got {str(value)[:200]!r}", 502)
    return {str(label): float(p) for label, p in value.items()}


def post_processing(data: list[dict] | None, context) -> list[dict] | None:
    """The classifier's top classes -> ``{"label": best, "confidence": its probability}``."""
    if data is None:
        return None
    out = []
    for idx, row in enumerate(data):
        scores = _scores(row.get("body"), f"request {idx}")
        label = max(scores, key=scores.__getitem__)
        out.append({"label": label, "confidence": scores[label]})
    return out
