"""Embed the example phrases of ``intents.yaml`` once, into ``intent_index.json``.

    python examples/workflows/text_intent/build_intent_index.py [--out PATH] [--force]

The index goes into ``text_intent.war`` as an extra file, where the ``nearest_intent``
function finds it. It is made with the very code the served ``embedder`` node runs
(``minilm.load_encoder`` / ``embed``), so the phrases and the requests are
embedded alike; it records the model's name and dimension, and ``nearest_intent`` refuses
embeddings from another model. Up to date (newer than its sources) -> nothing is done.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "build" / "intent_index.json"
INTENTS_FILE = HERE / "intents.yaml"
SOURCES = (INTENTS_FILE, HERE / "minilm.py", Path(__file__).resolve())
LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


def read_intents(path: Path = INTENTS_FILE) -> tuple[float, dict[str, list[str]]]:
    """``(threshold, {label: [example, ...]})`` from the YAML, or a ValueError saying what
    is wrong."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path.name} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("intents"), dict) or not doc["intents"]:
        raise ValueError(f"{path.name} must hold a mapping with a non-empty 'intents' mapping")
    threshold = doc.get("threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not -1.0 <= threshold <= 1.0:
        raise ValueError(f"{path.name}: threshold must be a number in [-1, 1], got "
                         f"{threshold!r}")
    intents: dict[str, list[str]] = {}
    for label, examples in doc["intents"].items():
        if not isinstance(label, str) or not LABEL.match(label):
            raise ValueError(f"{path.name}: intent name {label!r} must match {LABEL.pattern}")
        if (not isinstance(examples, list) or not examples
                or not all(isinstance(e, str) and e.strip() for e in examples)):
            raise ValueError(f"{path.name}: intent {label!r} needs a list of non-empty "
                             f"example phrases")
        intents[label] = [e.strip() for e in examples]
    return float(threshold), intents


def up_to_date(out: Path) -> bool:
    newest = max(p.stat().st_mtime for p in SOURCES)
    return out.is_file() and out.stat().st_mtime > newest


def build_index(out: Path = DEFAULT_OUT, *, force: bool = False) -> bool:
    """Write the index; False when it was already up to date."""
    if not force and up_to_date(out):
        return False
    threshold, intents = read_intents()
    sys.path.insert(0, str(HERE))
    import minilm  # what the served handler runs

    encoder = minilm.load_encoder("cpu")
    index: dict = {"model": minilm.MODEL_NAME, "threshold": threshold, "intents": {}}
    for label, examples in intents.items():
        vectors = minilm.embed(encoder, examples)
        index["intents"][label] = {"examples": examples,
                                   "embeddings": [[round(v, 6) for v in vec] for vec in vectors]}
        index["dimension"] = len(vectors[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(index) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Embed the intents' example phrases.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        built = build_index(args.out, force=args.force)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"build_intent_index.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {'written' if built else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
