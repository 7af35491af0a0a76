"""A small shape detector with no model: the background is the colour most of the picture's
border has; every connected region of other pixels big enough to be a shape is one object.
Each object comes back with its box and a square crop around it (padded with the background
colour), as the shapes model expects one shape per picture.

It ships in shapes_scene.war as an extra file, next to the workflow's handler file.
"""

from __future__ import annotations

import base64
import io
from collections import Counter, deque

from PIL import Image

STEP = 2  # look at every other pixel: plenty for shapes tens of pixels wide
MIN_PIXELS = 40  # smaller regions (after STEP) are noise, not shapes
DIFFERENT = 60  # RGB distance from the background that counts as "something there"
PAD = 0.3  # crop margin around a box, as a fraction of its longer side


def background_colour(image: Image.Image) -> tuple[int, int, int]:
    w, h = image.size
    px = image.load()
    border = [px[x, 0] for x in range(w)] + [px[x, h - 1] for x in range(w)]
    border += [px[0, y] for y in range(h)] + [px[w - 1, y] for y in range(h)]
    return Counter(border).most_common(1)[0][0]


def _foreground(image: Image.Image, bg: tuple[int, int, int]) -> list[list[bool]]:
    px = image.load()
    w, h = image.size
    limit = DIFFERENT ** 2
    return [[sum((a - b) ** 2 for a, b in zip(px[x, y], bg)) > limit
             for x in range(0, w, STEP)] for y in range(0, h, STEP)]


def _regions(mask: list[list[bool]]) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1), in mask cells, of the 4-connected regions."""
    rows, cols = len(mask), len(mask[0]) if mask else 0
    seen = [[False] * cols for _ in range(rows)]
    boxes = []
    for y in range(rows):
        for x in range(cols):
            if not mask[y][x] or seen[y][x]:
                continue
            seen[y][x] = True
            queue, count = deque([(x, y)]), 0
            x0, y0, x1, y1 = x, y, x, y
            while queue:
                cx, cy = queue.popleft()
                count += 1
                x0, y0, x1, y1 = min(x0, cx), min(y0, cy), max(x1, cx), max(y1, cy)
                for nx, ny in ((cx + 1, cy), (cx - 1, cy), (cx, cy + 1), (cx, cy - 1)):
                    if 0 <= nx < cols and 0 <= ny < rows and mask[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        queue.append((nx, ny))
            if count >= MIN_PIXELS:
                boxes.append((x0, y0, x1, y1))
    return boxes


def _square_crop(image: Image.Image, box: tuple[int, int, int, int],
                 bg: tuple[int, int, int]) -> bytes:
    x0, y0, x1, y1 = box
    side = int(max(x1 - x0, y1 - y0) * (1 + 2 * PAD)) + 1
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    canvas = Image.new("RGB", (side, side), bg)  # beyond the picture: background
    left, top = cx - side // 2, cy - side // 2
    inside = (max(left, 0), max(top, 0), min(left + side, image.width),
              min(top + side, image.height))
    canvas.paste(image.crop(inside), (inside[0] - left, inside[1] - top))
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def detect(picture: bytes) -> dict:
    """``{"size": [w, h], "background": [r, g, b], "boxes": [{"box", "crop"}]}``; ``crop``
    is base64 of a PNG, objects left to right, then top to bottom."""
    with Image.open(io.BytesIO(picture)) as opened:
        image = opened.convert("RGB")
    bg = background_colour(image)
    boxes = []
    for x0, y0, x1, y1 in _regions(_foreground(image, bg)):
        box = (x0 * STEP, y0 * STEP, x1 * STEP + STEP - 1, y1 * STEP + STEP - 1)
        boxes.append({"box": list(box),
                      "crop": base64.b64encode(_square_crop(image, box, bg)).decode()})
    boxes.sort(key=lambda b: (b["box"][1] // 64, b["box"][0]))
    return {"size": list(image.size), "background": list(bg), "boxes": boxes}
