"""Built-in ``image_segmenter`` handler (also ``ts.torch_handler.image_segmenter``).

Preprocessing is the image classifier's (resize, center crop, normalize; sizes settable the
same way). The model returns ``{"out": logits N x C x H x W}`` (torchvision's segmentation
models) or the logits tensor itself. Each request gets, per pixel, ``[class, probability]``
of its most likely class: a nested list H x W x 2 (the class index as a float, as TorchServe
returns it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .util import PredictionException
from .vision_handler import VisionHandler, standard_transform

__all__ = ["ImageSegmenter"]


class ImageSegmenter(VisionHandler):
    """Image in, the most likely class of every pixel out."""

    def image_processing(self, image: Image.Image) -> torch.Tensor:
        return standard_transform(image, self.resize_size or round(self.image_size * 256 / 224),
                                  self.image_size, self.mean, self.std)

    def postprocess(self, data: Any) -> list:
        logits = data["out"] if isinstance(data, dict) else data
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
            raise PredictionException("image_segmenter expects the model to return logits "
                                      "N x C x H x W (or {'out': logits})", 500)
        best = torch.max(F.softmax(logits.float(), dim=1), dim=1)
        return torch.stack([best.indices.to(best.values.dtype), best.values], dim=3).tolist()
