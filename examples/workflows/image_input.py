"""The image check both shapes workflows start with (shapes_chain, shapes_ensemble).

It ships in each .war as an extra file (``--extra-files``): a function node's model
directory holds the .war's extra files and is on ``sys.path``, so the workflow's handler file
imports it like any module next to it.
"""

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError
from ts.utils.util import PredictionException


def image_bytes(row: dict, idx: int) -> bytes:
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
