"""Base of the image handlers (also ``ts.torch_handler.vision_handler``), and the image
operations they share, written with Pillow and torch only.

``VisionHandler.preprocess`` takes each request's ``data`` or ``body``: image bytes, a str
holding base64 of the image (a ``text/plain`` body arrives as str; a ``data:...;base64,``
prefix is allowed), or a nested list of numbers (used as the tensor as is). Each decoded
``PIL.Image`` goes through ``self.image_processing(image)``, which subclasses define (a
method, or a class attribute such as a torchvision ``Compose`` when torchvision is
installed); here it is only "to a float tensor in [0, 1]", keeping the image's mode.

Bad input is a 400 naming the request: ``request <i> (<id>): could not decode image: ...``
(413 for an image over Pillow's pixel limit, unless ``limit_max_image_pixels`` is off).
TorchServe lets the Pillow error escape, which becomes a 503 "Prediction failed".

Sizes and normalization, for the subclasses that use :func:`standard_transform`: class
attributes ``resize_size`` (shorter side after resizing; ``None`` = ``image_size * 256 / 224``
rounded, i.e. 256 for 224), ``image_size`` (side of the center crop, 224), ``mean``/``std``
(ImageNet). A model's config overrides them: the ``handler:`` section of its model-config
YAML (``image_size``, ``resize_size``, ``mean``, ``std``, ``topk``, ``threshold``), else the
same keys in a ``setup_config.json`` in the model directory.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .base_handler import BaseHandler
from .util import PredictionException, row_input

__all__ = ["VisionHandler", "center_crop", "normalize", "resize_shorter", "standard_transform",
           "to_tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EIGHT_BIT_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"})

# Handler settings a model config may set, with the type each must have.
_CONFIG_KEYS: dict[str, type | tuple[type, ...]] = {
    "image_size": int, "resize_size": int, "topk": int, "threshold": (int, float),
    "mean": list, "std": list,
}


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An image as a float tensor C x H x W in [0, 1] (like torchvision's ToTensor); the
    mode is kept when it has 8 bits per band, else the image is converted to RGB."""
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode not in _EIGHT_BIT_MODES:
        image = image.convert("RGB")
    bands = len(image.getbands())
    width, height = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(height, width, bands).permute(2, 0, 1).float().div_(255.0)


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio (bilinear)."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short == size:
        return image
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image.resize(new_size, Image.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` square (padded with black if the image is smaller)."""
    width, height = image.size
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def normalize(tensor: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return (tensor - mean_t) / std_t


def standard_transform(image: Image.Image, resize_size: int, image_size: int,
                       mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD) -> torch.Tensor:
    """RGB -> resize shorter side -> center crop -> tensor -> normalize (ImageNet style)."""
    image = center_crop(resize_shorter(image.convert("RGB"), resize_size), image_size)
    return normalize(to_tensor(image), mean, std)


def read_handler_config(context: Any) -> dict:
    """The handler settings of the model config (see the module docstring), validated."""
    config: dict = {}
    model_dir = Path((context.system_properties or {}).get("model_dir") or ".")
    setup = model_dir / "setup_config.json"
    if setup.is_file():
        try:
            loaded = json.loads(setup.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"setup_config.json is not valid JSON: {exc}") from None
        if isinstance(loaded, dict):
            config.update({k: v for k, v in loaded.items() if k in _CONFIG_KEYS})
    yaml_config = getattr(context, "model_yaml_config", None) or {}
    section = yaml_config.get("handler") if isinstance(yaml_config, dict) else None
    if isinstance(section, dict):
        config.update({k: v for k, v in section.items() if k in _CONFIG_KEYS})
    for key, value in config.items():
        kind = _CONFIG_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"handler setting {key!r} has the wrong type: {value!r}")
        if key in ("image_size", "resize_size", "topk") and value < 1:
            raise ValueError(f"handler setting {key!r} must be at least 1, got {value}")
        if key in ("mean", "std") and (len(value) not in (1, 3) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ValueError(f"handler setting {key!r} must be a list of 1 or 3 numbers, "
                             f"got {value!r}")
    return config


def _decode_image(value: Any, idx: int, request_id: str | None) -> Image.Image | torch.Tensor:
    where = f"request {idx}" + (f" ({request_id})" if request_id else "")
    if value is None or (isinstance(value, (bytes, bytearray, str)) and not value):
        raise PredictionException(f"{where}: no image (send it as the body or a 'data' "
                                  f"field)", 400)
    if isinstance(value, list):
        try:
            return torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise PredictionException(f"{where}: the list is not an array of numbers "
                                      f"({exc})", 400) from None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            value = base64.b64decode(text, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise PredictionException(f"{where}: could not decode image: the text is not "
                                      f"base64 ({exc})", 400) from None
    if not isinstance(value, (bytes, bytearray)):
        raise PredictionException(f"{where}: could not decode image: expected image bytes, "
                                  f"got {type(value).__name__}", 400)
    try:
        image = Image.open(io.BytesIO(value))
        image.load()
    except Image.DecompressionBombError as exc:
        raise PredictionException(f"{where}: image too large: {exc}", 413) from None
    except Image.UnidentifiedImageError:
        raise PredictionException(f"{where}: could not decode image: not an image format "
                                  f"Pillow recognises", 400) from None
    except Exception as exc:  # Pillow raises several types for broken files
        raise PredictionException(f"{where}: could not decode image: "
                                  f"{type(exc).__name__}: {exc}", 400) from None
    return image


class VisionHandler(BaseHandler):
    """Decodes images, applies ``image_processing`` and stacks them into one batch."""

    image_size: int = 224
    resize_size: int | None = None
    mean: Any = IMAGENET_MEAN
    std: Any = IMAGENET_STD

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        for key, value in read_handler_config(context).items():
            setattr(self, key, value)
        if self.resize_size is None:
            self.resize_size = round(self.image_size * 256 / 224)
        if not context.system_properties.get("limit_max_image_pixels", True):
            Image.MAX_IMAGE_PIXELS = None
        self.initialized = True

    def image_processing(self, image: Image.Image) -> torch.Tensor:
        return to_tensor(image)

    def preprocess(self, data: list) -> torch.Tensor:
        context = self.context
        images = []
        for idx, row in enumerate(data):
            value = row_input(row)
            request_id = context.get_request_id(idx) if context is not None else None
            image = _decode_image(value, idx, request_id)
            if isinstance(image, Image.Image):
                image = self.image_processing(image)
            images.append(image)
        if not images:
            return torch.empty(0)
        shapes = {tuple(t.shape) for t in images}
        if len(shapes) > 1:
            raise PredictionException(f"the images of one batch must have the same size after "
                                      f"processing, got {sorted(shapes)}", 400)
        return torch.stack(images).to(self.device)
