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

import base64
import binascii
import io
import json

from PIL import Image, UnidentifiedImageError
from ts.utils.util import PredictionException


def _image_bytes(row: dict, idx: int) -> bytes:
    """The request's image as bytes, checked by decoding it; a 400 naming the problem else."""
    value = row.get("data")
    if value is None:
        value = row.get("body")
    if value is None:
        raise PredictionException(
            f"request {idx}: no image; send it as the body (curl -T picture.png) or as a "
            f"form field named 'data'", 400)
    if isinstance(value, str):  # a text/plain body: base64 of the image
        try:
            value = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise PredictionException(f"request {idx}: the body is text but not base64 of an "
                                      f"image", 400) from None
    if not isinstance(value, (bytes, bytearray)):
        raise PredictionException(f"request {idx}: expected an image, got JSON "
                                  f"({type(value).__name__})", 400)
    try:
        with Image.open(io.BytesIO(value)) as image:
            image.load()
    except Image.DecompressionBombError as exc:
        raise PredictionException(f"request {idx}: image too large: {exc}", 413) from None
    except UnidentifiedImageError:
        raise PredictionException(f"request {idx}: not an image (no image format Pillow "
                                  f"knows matches the {len(value)} bytes sent)", 400) from None
    except Exception as exc:  # Pillow raises many types for damaged files
        raise PredictionException(f"request {idx}: the image is damaged or unsupported "
                                  f"({type(exc).__name__}: {exc})", 400) from None
    return bytes(value)


def pre_processing(data: list[dict] | None, context) -> list[bytes] | None:
    """Validate each request's image and pass its bytes to the classifier."""
    if data is None:
        return None
    return [_image_bytes(row, idx) for idx, row in enumerate(data)]


def _scores(value, where: str) -> dict[str, float]:
    """A classifier's output (JSON ``{label: probability}``, as bytes, text or parsed)."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise PredictionException(f"{where}: the classifier's output is not JSON: "
                                      f"{value[:200]!r}", 502) from None
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
