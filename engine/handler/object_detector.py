"""Built-in ``object_detector`` handler (also ``ts.torch_handler.object_detector``).

Each image is only converted to RGB and to a tensor in [0, 1] (detection models normalize
and resize themselves); the images of one batch must have the same size. The model returns
one ``{"boxes": N x 4, "labels": N, "scores": N}`` dict per image (torchvision's detection
models). Each request gets a list with one ``{label: [x1, y1, x2, y2], "score": s}`` per
detection scoring at least ``threshold`` (0.5; settable like the image sizes, see
:mod:`dagserve.engine.handler.vision_handler`). Labels come from ``index_to_name.json``, else the
class index as a string.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from .util import PredictionException
from .vision_handler import VisionHandler, to_tensor

__all__ = ["ObjectDetector"]


class ObjectDetector(VisionHandler):
    """Image in, labelled boxes out."""

    threshold = 0.5

    def image_processing(self, image: Image.Image) -> torch.Tensor:
        return to_tensor(image.convert("RGB"))

    def postprocess(self, data: Any) -> list[list[dict]]:
        if not isinstance(data, (list, tuple)) or not all(isinstance(d, dict) for d in data):
            raise PredictionException("object_detector expects the model to return one dict "
                                      "with boxes, labels and scores per image", 500)
        mapping = self.mapping or {}
        results = []
        for row in data:
            keep = row["scores"] >= self.threshold
            boxes = row["boxes"][keep].tolist()
            labels = row["labels"][keep].tolist()
            scores = row["scores"][keep].tolist()
            results.append([
                {mapping.get(str(label), str(label)): box, "score": score}
                for label, box, score in zip(labels, boxes, scores)
            ])
        return results
