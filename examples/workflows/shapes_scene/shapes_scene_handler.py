"""Functions of the ``shapes_scene`` workflow: detect -> classifier (foreach) -> summary.

- ``detect`` (the start node) checks the picture (image_input.py) and finds the shapes in it
  (detector.py): ``{"size", "background", "boxes": [{"box": [x0, y0, x1, y1], "crop"}]}``.
- ``classifier`` is the shared ``shapes`` model, run once per ``boxes[*].crop`` (base64 PNG
  text, which the built-in image_classifier handler decodes).
- ``summary`` gets, through ``inputs``, the original picture, the boxes and the labels, and
  answers what is where.
"""

from __future__ import annotations

import io
import json
from collections import Counter

from PIL import Image

from detector import detect as find_shapes
from image_input import image_bytes
from node_output import parse_json_output


def detect(data: list[dict] | None, context) -> list[str] | None:
    if data is None:
        return None
    return [json.dumps(find_shapes(image_bytes(row, idx))) for idx, row in enumerate(data)]


def summary(data: list[dict] | None, context) -> list[str] | None:
    if data is None:
        return None
    out = []
    for row in data:
        picture = row["picture"]
        if isinstance(picture, str):  # a text/plain body: image_bytes reads base64
            picture = image_bytes({"body": picture}, 0)
        with Image.open(io.BytesIO(bytes(picture))) as image:
            size, kind = list(image.size), image.format
        boxes = parse_json_output(row.get("boxes", "[]"), "summary", "boxes")
        labels = parse_json_output(row.get("labels", "[]"), "summary", "the classifier's labels")
        objects = []
        for box, scores in zip(boxes, labels):
            label = max(scores, key=scores.get)
            objects.append({"box": box, "label": label, "confidence": round(scores[label], 4)})
        counts = Counter(o["label"] for o in objects)
        out.append(json.dumps({"picture": {"width": size[0], "height": size[1],
                                           "format": kind},
                               "objects": objects, "counts": dict(sorted(counts.items()))},
                              indent=2))
    return out
