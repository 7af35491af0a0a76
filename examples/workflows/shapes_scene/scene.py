"""Pictures of a scene: several shapes side by side on one plain background, for the
shapes_scene workflow (its detector finds them, the shapes model names each).

    python examples/workflows/shapes_scene/scene.py --labels circle,star,square --seed 3 \
        --out scene.png

Each shape gets a cell of a grid (so shapes never touch) and a random colour, size, place
in its cell and rotation, drawn with the same outlines the shapes model was trained on.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "image_classifier"))
from shapes import LABELS, draw_shape, label_name, shape_colour  # noqa: E402

CELL = 112  # pixels per grid cell


def draw_scene(rng: random.Random, labels: list[str], columns: int = 3) -> Image.Image:
    """One RGB picture holding ``labels``' shapes, left to right, top to bottom."""
    if not labels:
        raise ValueError("a scene needs at least one shape")
    names = [label_name(label) for label in labels]
    rows = math.ceil(len(names) / columns)
    width = CELL * min(columns, len(names))
    background = (rng.randrange(160, 256), rng.randrange(160, 256), rng.randrange(160, 256))
    image = Image.new("RGB", (width, CELL * rows), background)
    draw = ImageDraw.Draw(image)
    for index, name in enumerate(names):
        left, top = CELL * (index % columns), CELL * (index // columns)
        radius = rng.uniform(0.28, 0.38) * CELL
        cx = left + CELL / 2 + rng.uniform(-6, 6)
        cy = top + CELL / 2 + rng.uniform(-6, 6)
        draw_shape(draw, name, cx, cy, radius, rng.uniform(0, 2 * math.pi),
                   shape_colour(rng, [background]))
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a picture of several shapes.")
    parser.add_argument("--labels", required=True,
                        help=f"comma-separated shapes, left to right ({', '.join(LABELS)})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--columns", type=int, default=3, help="shapes per row (default 3)")
    parser.add_argument("--out", required=True, type=Path, help="output file (.png, ...)")
    args = parser.parse_args(argv)
    try:
        image = draw_scene(random.Random(args.seed), args.labels.split(","), args.columns)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image.save(args.out)
    except (ValueError, OSError) as exc:
        print(f"scene.py: error: {exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
