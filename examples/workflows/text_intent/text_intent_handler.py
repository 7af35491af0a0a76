"""Function of the ``text_intent`` workflow: embedder -> nearest_intent.

The ``embedder`` model node turns the request's text into a normalized embedding (JSON, see
``embedder_handler.py``). ``nearest_intent`` compares it with the embeddings of each
intent's example phrases, made once at build time by the same model and shipped in the
.war as ``intent_index.json`` (see ``build_intent_index.py``). This node is plain
arithmetic: it loads no model, and the embedder stays a general-purpose model that other
workflows (or ``/predictions``) can use.

Answer per request::

    {"intent": "weather", "score": 0.71, "text": "what's the weather tomorrow",
     "scores": {"weather": 0.71, "greeting": 0.18, ...}}

``score`` is the best cosine similarity between the text and an intent's examples;
``intent`` is ``"unknown"`` when no intent reaches the index's threshold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ts.utils.util import PredictionException

from node_output import parse_json_output

INDEX_FILE = "intent_index.json"
_indexes: dict[Path, dict] = {}  # model dir -> loaded index


def _load_index(context) -> dict:
    """The intent index from the workflow's files (loaded once per process)."""
    model_dir = Path((context.system_properties or {}).get("model_dir") or ".").resolve()
    index = _indexes.get(model_dir)
    if index is None:
        path = model_dir / INDEX_FILE
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RuntimeError(f"{INDEX_FILE} is not among the workflow's files ({model_dir}); "
                               f"build the .war with examples/build.py") from None
        except ValueError as exc:
            raise RuntimeError(f"{INDEX_FILE} is not valid JSON: {exc}") from None
        if not isinstance(index, dict) or not isinstance(index.get("intents"), dict):
            raise RuntimeError(f"{INDEX_FILE} has no 'intents' mapping")
        _indexes[model_dir] = index
    return index


def _cosine(a: list[float], b: list[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return dot / norm if norm else 0.0


def _embedding(value, index: dict, idx: int) -> tuple[str | None, list[float]]:
    """The embedder's output for one request: (text, vector), checked against the index."""
    where = f"request {idx}"
    value = parse_json_output(value, where, "the embedder's output")
    vector = value.get("embedding") if isinstance(value, dict) else None
    if not isinstance(vector, list) or not vector or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
        raise PredictionException(f"{where}: expected the embedder's JSON with an "
                                  f"'embedding' list of numbers", 502)
    if value.get("model") != index.get("model") or len(vector) != index.get("dimension"):
        raise PredictionException(
            f"{where}: the embedding comes from {value.get('model')!r} ({len(vector)} dims) "
            f"but {INDEX_FILE} was made with {index.get('model')!r} "
            f"({index.get('dimension')} dims); rebuild the workflow", 502)
    text = value.get("text")
    return (text if isinstance(text, str) else None), [float(v) for v in vector]


def _nearest(vector: list[float], index: dict) -> tuple[str, float, dict[str, float]]:
    scores = {label: max(_cosine(vector, example) for example in entry["embeddings"])
              for label, entry in index["intents"].items()}
    ranked = dict(sorted(scores.items(), key=lambda item: (-item[1], item[0])))
    best = next(iter(ranked))
    intent = best if ranked[best] >= float(index.get("threshold", 0.0)) else "unknown"
    return intent, ranked[best], {label: round(s, 4) for label, s in ranked.items()}


def nearest_intent(data: list[dict] | None, context) -> list[dict] | None:
    """The intent whose examples are most similar to each request's text."""
    index = _load_index(context)  # at start too (data is None): a missing index fails early
    if data is None:
        return None
    out = []
    for idx, row in enumerate(data):
        text, vector = _embedding(row.get("body"), index, idx)
        intent, score, scores = _nearest(vector, index)
        out.append({"intent": intent, "score": round(score, 4), "text": text,
                    "scores": scores})
    return out
