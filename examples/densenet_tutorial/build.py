"""Make the three files TorchServe's getting-started tutorial downloads, locally:
``densenet161-8d451a50.pth`` (the state dict of model.py's small DenseNet, seeded random
weights: the tutorial is about the commands, not the answer), ``index_to_name.json`` (its
ten labels) and ``kitten_small.jpg`` (a drawn picture).

    python examples/densenet_tutorial/build.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
WEIGHTS = "densenet161-8d451a50.pth"
LABELS = ["tabby", "tiger_cat", "Persian_cat", "Egyptian_cat", "lynx", "tiger", "lion",
          "cheetah", "snow_leopard", "cougar"]


def build(out: Path, seed: int = 0) -> dict[str, Path]:
    sys.path.insert(0, str(HERE))
    try:
        from model import ImageClassifier
    finally:
        sys.path.remove(str(HERE))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = ImageClassifier().eval()
    paths = {"weights": out / WEIGHTS, "labels": out / "index_to_name.json",
             "image": out / "kitten_small.jpg"}
    torch.save(model.state_dict(), paths["weights"])
    paths["labels"].write_text(json.dumps({str(i): [f"n0212{i:04d}", name]
                                           for i, name in enumerate(LABELS)}, indent=2))
    image = Image.new("RGB", (160, 120), (225, 215, 190))
    draw = ImageDraw.Draw(image)
    draw.ellipse((45, 35, 115, 105), fill=(200, 140, 70))  # head
    draw.polygon([(50, 50), (58, 15), (75, 40)], fill=(190, 130, 60))  # ears
    draw.polygon([(110, 50), (102, 15), (85, 40)], fill=(190, 130, 60))
    draw.ellipse((62, 58, 72, 68), fill=(40, 90, 40))  # eyes
    draw.ellipse((88, 58, 98, 68), fill=(40, 90, 40))
    image.save(paths["image"], quality=90)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="directory to write the files to")
    for path in build(Path(parser.parse_args().out)).values():
        print(path)


if __name__ == "__main__":
    main()
