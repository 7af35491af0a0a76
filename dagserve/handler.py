"""The model author's SDK: what a custom handler imports.

``from dagserve.handler import BaseHandler, Context, PredictionException``. The names load
lazily, so a function handler that imports this does not import torch. TorchServe handlers
keep importing ``ts.*``; those names resolve to the same objects inside a worker.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BaseHandler", "Context", "PredictionException", "ImageClassifier",
           "ImageSegmenter", "ObjectDetector", "TextClassifier", "VisionHandler"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from dagserve.engine import handler

    return getattr(handler, name)
