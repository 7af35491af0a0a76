"""The text_classifier handler with a small EmbeddingBag model and its vocabulary."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dagserve.engine.handler import ts_alias
from dagserve.engine.handler.service import ServiceConfig, load_service
from dagserve.engine.handler.text_handler import TextHandler
from dagserve.engine.messages import Param, Request

VOCAB = {"<unk>": 0, "good": 1, "bad": 2, "movie": 3, "not": 4, "do not": 5}

# "good" pushes class 0, "bad" class 1; every other token (and <unk>) is neutral, except
# the bigram "do not", which flips towards class 1 (it only exists after expanding "don't").
MODEL_PY = """
    import torch
    from torch import nn

    class BagNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = nn.EmbeddingBag(6, 2, mode="sum")

        def forward(self, text, offsets):
            return self.bag(text, offsets)
"""


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    ts_alias.install()


def text_model_dir(model_dir: Path, vocab_file: str = "vocab.json") -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.py").write_text(textwrap.dedent(MODEL_PY))
    weights = torch.zeros(6, 2)
    weights[1] = torch.tensor([3.0, 0.0])
    weights[2] = torch.tensor([0.0, 3.0])
    weights[5] = torch.tensor([0.0, 6.0])
    torch.save({"bag.weight": weights}, model_dir / "bag.pth")
    if vocab_file.endswith(".json"):
        (model_dir / vocab_file).write_text(json.dumps(VOCAB))
    else:
        torch.save(dict(VOCAB), model_dir / vocab_file)
    (model_dir / "index_to_name.json").write_text('{"0": "positive", "1": "negative"}')
    (model_dir / "MAR-INF").mkdir(exist_ok=True)
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps({"model": {
        "modelName": "sentiment", "handler": "text_classifier", "modelFile": "model.py",
        "serializedFile": "bag.pth"}}))
    return model_dir


def top_label(resp) -> str:
    result = json.loads(resp.value)
    assert sorted(result) == ["negative", "positive"]
    assert sum(result.values()) == pytest.approx(1.0, abs=1e-5)
    return max(result, key=result.get)


@pytest.mark.parametrize("vocab_file", ["vocab.json", "source_vocab.pt"])
def test_text_classifier_batch(tmp_path, vocab_file):
    service = load_service(ServiceConfig(text_model_dir(tmp_path, vocab_file), "sentiment",
                                         "text_classifier"))
    reqs = [
        Request("a", [Param("body", "text/plain", b"A <b>GOOD</b> movie!")]),
        Request("b", [Param("data", None, "Bad, b\u00e1d movie.".encode())]),
        Request("c", [Param("body", "text/plain", b"I don't like it")]),
        Request("d", [Param("body", "text/plain", b"")]),
    ]
    resps, _ = service.predict(reqs)
    assert [r.code for r in resps] == [200] * 4
    assert [top_label(r) for r in resps[:3]] == ["positive", "negative", "negative"]
    assert json.loads(resps[3].value) == {"positive": 0.5, "negative": 0.5}


def test_non_utf8_text_is_a_400(tmp_path):
    service = load_service(ServiceConfig(text_model_dir(tmp_path), "sentiment",
                                         "text_classifier"))
    resps, _ = service.predict([Request("a", [Param("body", None, b"\xff\xfe")])])
    assert resps[0].code == 400 and "not UTF-8" in resps[0].message


def test_missing_vocabulary_is_a_load_error(tmp_path):
    model_dir = text_model_dir(tmp_path)
    (model_dir / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="needs a vocabulary"):
        load_service(ServiceConfig(model_dir, "sentiment", "text_classifier"))


def test_bad_vocabulary_is_a_load_error(tmp_path):
    model_dir = text_model_dir(tmp_path)
    (model_dir / "vocab.json").write_text('{"good": "one"}')
    with pytest.raises(ValueError, match="dict token -> id or a list of tokens"):
        load_service(ServiceConfig(model_dir, "sentiment", "text_classifier"))


def test_text_cleanup_steps():
    handler = TextHandler()
    assert handler._remove_html_tags("a <i>b</i> &amp; c") == "a b  c"
    assert handler._expand_contractions("I'm sure they won\u2019t") == "I am sure they will not"
    assert handler._remove_accented_characters("caf\u00e9 na\u00efve") == "cafe naive"
    assert handler._remove_punctuation("hi, there!") == "hi there"
    assert handler._tokenize(" a  b\tc ") == ["a", "b", "c"]
