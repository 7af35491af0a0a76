"""Base of the text handlers (also ``ts.torch_handler.text_handler``): the vocabulary and
the text clean-up steps TorchServe's text handlers offer, without torchtext.

The vocabulary maps tokens to ids. It is read from the first of: the manifest's
``model.sourceVocab`` file, ``source_vocab.pt``, ``source_vocab.json``, ``vocab.json`` in the
model directory. A ``.pt`` must hold a plain ``dict`` (token -> id) or ``list`` (id ->
token) saved with ``torch.save`` (it is read with ``weights_only=True``; a pickled torchtext
``Vocab`` is refused: save ``dict(vocab.get_stoi())`` instead). JSON holds the same dict or
list. A token not in the vocabulary gets the id of ``<unk>``, else 0.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from pathlib import Path
from typing import Any

import torch

from .base_handler import BaseHandler

__all__ = ["TextHandler", "load_vocab"]

_TAGS = re.compile(r"<[^>]*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});", re.IGNORECASE)
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_CONTRACTIONS = {
    "ain't": "is not", "aren't": "are not", "can't": "cannot", "couldn't": "could not",
    "didn't": "did not", "doesn't": "does not", "don't": "do not", "hadn't": "had not",
    "hasn't": "has not", "haven't": "have not", "he's": "he is", "i'd": "i would",
    "i'll": "i will", "i'm": "i am", "i've": "i have", "isn't": "is not", "it's": "it is",
    "let's": "let us", "shouldn't": "should not", "she's": "she is", "that's": "that is",
    "there's": "there is", "they'd": "they would", "they'll": "they will",
    "they're": "they are", "they've": "they have", "wasn't": "was not", "we'd": "we would",
    "we're": "we are", "we've": "we have", "weren't": "were not", "what's": "what is",
    "won't": "will not", "wouldn't": "would not", "you'd": "you would",
    "you'll": "you will", "you're": "you are", "you've": "you have",
}
_CONTRACTION_RE = re.compile(r"\b(" + "|".join(re.escape(k) for k in _CONTRACTIONS) + r")\b",
                             re.IGNORECASE)
_VOCAB_FILES = ("source_vocab.pt", "source_vocab.json", "vocab.json")


def _as_vocab(obj: Any, name: str) -> dict[str, int]:
    if isinstance(obj, list) and all(isinstance(t, str) for t in obj):
        return {token: i for i, token in enumerate(obj)}
    if isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, int)
                                     and not isinstance(v, bool) for k, v in obj.items()):
        return dict(obj)
    raise ValueError(f"{name} must hold a dict token -> id or a list of tokens")


def load_vocab(path: Path) -> dict[str, int]:
    """Read a vocabulary file (see the module docstring)."""
    if path.suffix == ".json":
        try:
            return _as_vocab(json.loads(path.read_text(encoding="utf-8")), path.name)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path.name}: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"could not read {path.name} as a plain dict or list (a torchtext "
                         f"Vocab? save dict(vocab.get_stoi()) instead): {exc}") from None
    return _as_vocab(obj, path.name)


class TextHandler(BaseHandler):
    """Loads the vocabulary; offers the clean-up steps as methods."""

    def __init__(self) -> None:
        super().__init__()
        self.source_vocab: dict[str, int] = {}
        self.unk_id = 0

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        model_dir = Path(context.system_properties.get("model_dir") or ".")
        named = (self.manifest or {}).get("model", {}).get("sourceVocab")
        candidates = ([model_dir / named] if named else []) + [model_dir / f for f in _VOCAB_FILES]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{type(self).__name__} needs a vocabulary in the model "
                                    f"directory: one of {', '.join(_VOCAB_FILES)}")
        self.source_vocab = load_vocab(path)
        self.unk_id = self.source_vocab.get("<unk>", 0)
        self.initialized = True

    def _remove_html_tags(self, text: str) -> str:
        return _TAGS.sub("", text)

    def _expand_contractions(self, text: str) -> str:
        def expand(match: re.Match) -> str:
            word = match.group(0)
            full = _CONTRACTIONS[word.lower()]
            return full[0].upper() + full[1:] if word[0].isupper() else full

        return _CONTRACTION_RE.sub(expand, text.replace("\u2019", "'"))

    def _remove_accented_characters(self, text: str) -> str:
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")

    def _remove_punctuation(self, text: str) -> str:
        return text.translate(_PUNCTUATION)

    _remove_puncutation = _remove_punctuation  # TorchServe's spelling

    def _tokenize(self, text: str) -> list[str]:
        return text.split()

    def token_ids(self, tokens: list[str]) -> list[int]:
        vocab, unk = self.source_vocab, self.unk_id
        return [vocab.get(t, unk) for t in tokens]
