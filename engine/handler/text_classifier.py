"""Built-in ``text_classifier`` handler (also ``ts.torch_handler.text_classifier``).

Each request is one text (a str, or UTF-8 bytes). It is cleaned the way TorchServe's text
classifier does it (HTML tags removed, lower case, contractions expanded, accents and
punctuation removed), split on whitespace, and turned into token ids with the vocabulary
(see :mod:`dagserve.engine.handler.text_handler`), followed by the ids of the word n-grams up to
``ngrams`` (2: each pair ``"w1 w2"``; an n-gram missing from the vocabulary gets the
unknown id).

The model follows the ``nn.EmbeddingBag`` convention, so a whole batch runs in one call:
``model(ids, offsets)`` with ``ids`` every request's ids concatenated (int64) and
``offsets`` where each request starts; it returns logits ``batch x classes``. Each request
gets ``{label: probability}`` for every class (softmax), labels from ``index_to_name.json``
else the class index as a string.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .text_handler import TextHandler
from .util import PredictionException, map_class_to_label, row_input

__all__ = ["TextClassifier"]


class TextClassifier(TextHandler):
    """Text in, class probabilities out."""

    ngrams = 2

    def _ngrams(self, tokens: list[str]) -> list[str]:
        out = list(tokens)
        for n in range(2, self.ngrams + 1):
            out += [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        return out

    def preprocess(self, data: list) -> tuple[torch.Tensor, torch.Tensor]:
        ids: list[int] = []
        offsets: list[int] = []
        for idx, row in enumerate(data):
            text = row_input(row)
            if isinstance(text, (bytes, bytearray)):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise PredictionException(f"request {idx}: the text is not UTF-8 "
                                              f"({exc})", 400) from None
            if not isinstance(text, str):
                raise PredictionException(f"request {idx}: expected a text, got "
                                          f"{type(text).__name__}", 400)
            text = self._remove_html_tags(text).lower()
            text = self._expand_contractions(text)
            text = self._remove_accented_characters(text)
            tokens = self._tokenize(self._remove_punctuation(text))
            offsets.append(len(ids))
            ids += self.token_ids(self._ngrams(tokens))
        return (torch.tensor(ids, dtype=torch.int64, device=self.device),
                torch.tensor(offsets, dtype=torch.int64, device=self.device))

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        ids, offsets = data
        with torch.inference_mode():
            return self.model(ids, offsets, *args, **kwargs)

    def postprocess(self, data: torch.Tensor) -> list[dict]:
        probs = F.softmax(data.float(), dim=1)
        return map_class_to_label(probs.tolist(), self.mapping)
