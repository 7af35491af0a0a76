"""Built-in ``image_classifier`` handler (also ``ts.torch_handler.image_classifier``).

Each request is one image (bytes, or base64 text; see :mod:`dagserve.engine.handler.vision_handler`):
RGB -> resize the shorter side to ``resize_size`` (256) -> center crop ``image_size`` (224)
-> tensor -> normalize with ``mean``/``std`` (ImageNet). The model's logits go through a
softmax; each request gets one JSON object ``{label: probability}`` of the ``topk`` (5, or
fewer when the model has fewer classes) most likely classes, most likely first. Labels come
from ``index_to_name.json``, else the class index as a string.

For a model trained on other sizes, subclass and set ``image_size``/``resize_size`` (and
``mean``/``std``, ``topk``), or put them in the model config::

    handler:
      image_size: 64
      resize_size: 64
      topk: 3
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from .util import map_class_to_label
from .vision_handler import VisionHandler, standard_transform

__all__ = ["ImageClassifier"]


class ImageClassifier(VisionHandler):
    """Image in, the top classes with their probabilities out."""

    topk = 5

    def image_processing(self, image: Image.Image) -> torch.Tensor:
        return standard_transform(image, self.resize_size or round(self.image_size * 256 / 224),
                                  self.image_size, self.mean, self.std)

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    def postprocess(self, data: torch.Tensor) -> list[dict]:
        probs = F.softmax(data.float(), dim=1)
        k = min(self.topk, probs.shape[1])
        top_probs, top_classes = torch.topk(probs, k, dim=1)
        return map_class_to_label(top_probs.tolist(), self.mapping, top_classes.tolist())
