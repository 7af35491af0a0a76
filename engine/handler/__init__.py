"""What model authors import inside a worker: ``BaseHandler``, ``Context``, the built-in
handlers and ``PredictionException``, plus the ``ts.*`` alias (:mod:`.ts_alias`) that lets
TorchServe handlers run unchanged.

Meant for worker processes. The names below load lazily, so importing this package (or
``dagserve.engine.handler.service`` for a function handler) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BaseHandler": "base_handler",
    "Context": "context",
    "ImageClassifier": "image_classifier",
    "ImageSegmenter": "image_segmenter",
    "ObjectDetector": "object_detector",
    "PredictionException": "util",
    "TextClassifier": "text_classifier",
    "VisionHandler": "vision_handler",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
