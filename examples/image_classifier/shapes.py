"""Synthetic, labelled pictures of simple shapes, drawn with Pillow.

Every picture holds one filled shape (circle, square, triangle, star, cross or heart) of a
random colour, size, position and rotation on a solid, noisy or gradient background.
Everything comes from a ``random.Random`` the caller seeds, so a seed always gives the same
pictures, on any machine.

As a command line tool it writes one sample picture, for trying a served model by hand::

    python examples/image_classifier/shapes.py --label circle --seed 7 --out /tmp/circle.png
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

LABELS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")

#: Side of the square pictures the model sees (after resize and center crop).
MODEL_INPUT_SIZE = 64
#: Normalization the built-in ``image_classifier`` handler applies (ImageNet statistics).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_MIN_CONTRAST = 110.0  # least RGB distance between a shape and every background colour


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return math.dist(a, b)


def _rotated_gradient(degrees: float) -> Image.Image:
    """A linear gradient (L mode) running in any direction, with no empty corners: the
    centre of a rotated square, small enough to lie inside it at every angle."""
    side = 256
    big = Image.linear_gradient("L").rotate(degrees, resample=Image.BILINEAR)
    inner = int(side / math.sqrt(2)) - 2
    left = (side - inner) // 2
    return big.crop((left, left, left + inner, left + inner))


def _background(rng: random.Random, size: int) -> tuple[Image.Image, list[tuple[int, int, int]]]:
    """A solid, noisy or gradient background and the colours it is made of."""
    kind = rng.choice(("solid", "noisy", "gradient"))
    base = _colour(rng)
    image = Image.new("RGB", (size, size), base)
    if kind == "noisy":
        noise = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
        image = Image.blend(image, noise, rng.uniform(0.1, 0.35))
        return image, [base]
    if kind == "gradient":
        other = _colour(rng)
        mask = _rotated_gradient(rng.uniform(0, 360)).resize((size, size), Image.BILINEAR)
        image = Image.composite(Image.new("RGB", (size, size), other), image, mask)
        return image, [base, other]
    return image, [base]


def shape_colour(rng: random.Random, avoid: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """A random colour far enough from every background colour to stay visible."""
    best, best_gap = (0, 0, 0), -1.0
    for _ in range(64):
        colour = _colour(rng)
        gap = min(_distance(colour, other) for other in avoid)
        if gap >= _MIN_CONTRAST:
            return colour
        if gap > best_gap:
            best, best_gap = colour, gap
    return best


def _rotated(points: list[tuple[float, float]], angle: float, cx: float, cy: float,
             scale: float) -> list[tuple[float, float]]:
    """Unit-size points rotated by ``angle`` (radians), scaled and moved to (cx, cy)."""
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + scale * (x * cos - y * sin), cy + scale * (x * sin + y * cos)) for x, y in points]


def _regular(n: int, start: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(math.cos(start + 2 * math.pi * k / n), math.sin(start + 2 * math.pi * k / n))
            for k in range(n)]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + math.pi * k / points
        out.append((radius * math.cos(angle), radius * math.sin(angle)))
    return out


def _cross(arm: float = 0.32) -> list[tuple[float, float]]:
    a = arm
    return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
            (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]


def _heart(steps: int = 48) -> list[tuple[float, float]]:
    """The classic parametric heart, scaled to fit the unit circle, point down."""
    out = []
    for k in range(steps):
        t = 2 * math.pi * k / steps
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        out.append((x / 17.0, -(y + 2.5) / 17.0))
    return out


_OUTLINES = {
    "square": _regular(4, start=-math.pi / 4),
    "triangle": _regular(3),
    "star": _star(),
    "cross": _cross(),
    "heart": _heart(),
}


def label_name(label: str | int) -> str:
    """The label's name, from a name or an index into ``LABELS``; a clear error otherwise."""
    if isinstance(label, int) and not isinstance(label, bool):
        if 0 <= label < len(LABELS):
            return LABELS[label]
        raise ValueError(f"label index {label} is out of range 0..{len(LABELS) - 1}")
    if label in LABELS:
        return label
    raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")


def draw_sample(rng: random.Random, label: str | int, size: int = 128) -> Image.Image:
    """One RGB picture, ``size`` x ``size`` pixels, of a shape of class ``label``."""
    name = label_name(label)
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    image, background_colours = _background(rng, size)
    colour = shape_colour(rng, background_colours)
    radius = rng.uniform(0.2, 0.42) * size
    margin = radius + 1
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    angle = 0.0 if name == "circle" else rng.uniform(0, 2 * math.pi)  # same draws as ever
    draw_shape(ImageDraw.Draw(image), name, cx, cy, radius, angle, colour)
    return image


def draw_shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, radius: float,
               angle: float, colour: tuple[int, int, int]) -> None:
    """One filled shape of class ``name`` centred at (cx, cy), rotated by ``angle``."""
    if name == "circle":
        r = radius * 0.85  # a circle fills its box: keep its area close to the others'
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon(_rotated(_OUTLINES[label_name(name)], angle, cx, cy, radius), fill=colour)


def to_tensor(image: Image.Image, size: int = MODEL_INPUT_SIZE):
    """What the ``image_classifier`` handler does to a picture: resize the shorter side to
    ``size``, center-crop ``size`` x ``size``, scale to [0, 1], normalize. Returns 3 x S x S."""
    import torch

    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                         Image.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    tensor = pixels.view(size, size, 3).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (tensor - mean) / std


def make_dataset(n: int, seed: int, size: int = MODEL_INPUT_SIZE):
    """``n`` labelled pictures as (float tensor n x 3 x S x S, long tensor n), classes balanced.

    Each picture is drawn at a random size between S and 2.5 S and brought to S x S the way
    the serving handler does it, so the model sees what it will be served."""
    import torch

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = random.Random(seed)
    labels = [k % len(LABELS) for k in range(n)]
    rng.shuffle(labels)
    images = torch.empty((n, 3, size, size), dtype=torch.float32)
    for i, label in enumerate(labels):
        native = rng.randint(size, int(size * 2.5))
        images[i] = to_tensor(draw_sample(rng, label, native), size)
    return images, torch.tensor(labels, dtype=torch.long)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write one sample picture of a shape.")
    parser.add_argument("--label", required=True, choices=LABELS, help="shape to draw")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=128, help="side in pixels (default 128)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output file; the format follows the suffix (.png, .jpg, ...)")
    args = parser.parse_args(argv)
    try:
        image = draw_sample(random.Random(args.seed), args.label, args.size)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image.save(args.out)
    except (ValueError, OSError, KeyError) as exc:
        print(f"shapes.py: error: {exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
