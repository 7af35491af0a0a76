"""The image handlers: image_classifier on pictures drawn with Pillow, the shared
transforms, and object_detector / image_segmenter with small stand-in models."""

from __future__ import annotations

import base64
import io
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from dagserve.engine.handler import ts_alias
from dagserve.engine.handler.service import ServiceConfig, load_service
from dagserve.engine.handler.vision_handler import (IMAGENET_MEAN, IMAGENET_STD, center_crop,
                                           resize_shorter, standard_transform, to_tensor)
from dagserve.engine.messages import Param, Request

# Logits from the mean of each colour channel: a red picture is class 0, green 1, blue 2;
# the fourth class never wins. It checks the input shape it was built for.
COLOUR_MODEL = """
    import torch
    from torch import nn

    class ColourNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            assert x.shape[1:] == (3, SIZE, SIZE), x.shape
            means = x.mean(dim=(2, 3)) * self.scale * 5
            return torch.cat([means, means.min(dim=1, keepdim=True).values - 5], dim=1)
"""


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    ts_alias.install()


def png(colour: str, size: tuple[int, int] = (50, 40), fmt: str = "PNG") -> bytes:
    image = Image.new("RGB", size, colour)
    ImageDraw.Draw(image).ellipse((10, 10, 20, 20), fill="white")
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def classifier_dir(model_dir: Path, size: int, *, handler: str = "image_classifier",
                   config: str | None = None, extra: dict[str, str] | None = None) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.py").write_text(textwrap.dedent(COLOUR_MODEL).replace("SIZE", str(size)))
    torch.save({"scale": torch.ones(1)}, model_dir / "weights.pth")
    model = {"modelName": "colours", "handler": handler, "modelFile": "model.py",
             "serializedFile": "weights.pth"}
    if config is not None:
        (model_dir / "model-config.yaml").write_text(textwrap.dedent(config))
        model["configFile"] = "model-config.yaml"
    (model_dir / "MAR-INF").mkdir(exist_ok=True)
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps({"model": model}))
    for name, text in (extra or {}).items():
        (model_dir / name).write_text(textwrap.dedent(text))
    return model_dir


def predict(service, *bodies: tuple[str, bytes, str | None]):
    reqs = [Request(f"req-{i}", [Param(name, ct, value)])
            for i, (name, value, ct) in enumerate(bodies)]
    return service.predict(reqs)[0]


def test_image_classifier_top_classes_with_labels(tmp_path):
    model_dir = classifier_dir(tmp_path, 32, config="""
        handler:
          image_size: 32
          resize_size: 36
          topk: 3
    """, extra={"index_to_name.json": '{"0": "red", "1": ["g", "green"], "2": "blue"}'})
    service = load_service(ServiceConfig(model_dir, "colours", "image_classifier"))
    resps = predict(service,
                    ("body", png("red"), "image/png"),
                    ("data", png("blue", (30, 70), "JPEG"), "image/jpeg"),
                    ("body", base64.b64encode(png("#00c000")), "text/plain"))
    assert [r.code for r in resps] == [200, 200, 200]
    results = [json.loads(r.value) for r in resps]
    assert [next(iter(r)) for r in results] == ["red", "blue", "green"]
    for result in results:
        probs = list(result.values())
        assert len(result) == 3 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1.0 + 1e-6
    assert "3" not in results[0]  # the never-winning class is outside the top 3


def test_topk_is_capped_by_the_number_of_classes_and_labels_default_to_indices(tmp_path):
    model_dir = classifier_dir(tmp_path, 32, config="handler:\n  image_size: 32\n")
    service = load_service(ServiceConfig(model_dir, "colours", "image_classifier"))
    result = json.loads(predict(service, ("body", png("red"), None))[0].value)
    assert list(result)[0] == "0" and sorted(result) == ["0", "1", "2", "3"]
    assert sum(result.values()) == pytest.approx(1.0, abs=1e-5)


def test_subclass_attributes_set_the_sizes(tmp_path):
    model_dir = classifier_dir(tmp_path, 16, handler="small.py", extra={"small.py": """
        from ts.torch_handler.image_classifier import ImageClassifier

        class Small(ImageClassifier):
            image_size = 16
            topk = 1
    """})
    service = load_service(ServiceConfig(model_dir, "colours", "small.py"))
    handler = service._entry_point.__self__
    assert (handler.image_size, handler.resize_size) == (16, 18)  # 16 * 256 / 224, rounded
    assert json.loads(predict(service, ("body", png("blue"), None))[0].value).keys() == {"2"}


def test_setup_config_json_is_honoured(tmp_path):
    model_dir = classifier_dir(tmp_path, 24, extra={
        "setup_config.json": '{"image_size": 24, "topk": 2, "unrelated": true}'})
    service = load_service(ServiceConfig(model_dir, "colours", "image_classifier"))
    assert len(json.loads(predict(service, ("body", png("red"), None))[0].value)) == 2


def test_bad_handler_settings_are_load_errors(tmp_path):
    model_dir = classifier_dir(tmp_path, 32, config="handler:\n  image_size: big\n")
    with pytest.raises(ValueError, match="'image_size' has the wrong type"):
        load_service(ServiceConfig(model_dir, "colours", "image_classifier"))


@pytest.mark.parametrize("value, ct, message", [
    (b"definitely not an image", "image/png", "could not decode image: not an image format"),
    (b"not base64 at all!", "text/plain", "could not decode image: the text is not base64"),
    (png("red")[:60], "image/png", "could not decode image"),
    (b"", None, "no image"),
    (b"{\"a\": 1}", "application/json", "expected image bytes, got dict"),
])
def test_malformed_images_are_a_400_naming_the_request(tmp_path, value, ct, message):
    service = load_service(ServiceConfig(classifier_dir(tmp_path, 32, config=(
        "handler:\n  image_size: 32\n")), "colours", "image_classifier"))
    reqs = [Request("good", [Param("body", None, png("red"))]),
            Request("bad-one", [Param("body", ct, value)])]
    resps, _ = service.predict(reqs)
    assert {r.code for r in resps} == {400}
    assert resps[1].message.startswith("request 1 (bad-one): ")
    assert message in resps[1].message


def test_list_input_is_used_as_the_tensor(tmp_path):
    service = load_service(ServiceConfig(classifier_dir(tmp_path, 4, config=(
        "handler:\n  image_size: 4\n")), "colours", "image_classifier"))
    pixels = [[[1.0] * 4] * 4, [[0.0] * 4] * 4, [[0.0] * 4] * 4]
    resp = predict(service, ("body", json.dumps(pixels).encode(), "application/json"))[0]
    assert next(iter(json.loads(resp.value))) == "0"


# -- transforms ----------------------------------------------------------------------------

def test_standard_transform_geometry_and_values():
    image = Image.new("RGB", (40, 20), "red")
    ImageDraw.Draw(image).rectangle((20, 0, 39, 19), fill="blue")  # right half blue
    out = standard_transform(image, 10, 8)
    assert out.shape == (3, 8, 8)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    red = (torch.tensor([1.0, 0.0, 0.0]) - mean) / std
    blue = (torch.tensor([0.0, 0.0, 1.0]) - mean) / std
    # resized to 20 x 10, the central 8 columns are 6..13: four red, then four blue
    assert torch.allclose(out[:, :, 0], red.view(3, 1).expand(3, 8), atol=1e-5)
    assert torch.allclose(out[:, :, 7], blue.view(3, 1).expand(3, 8), atol=1e-5)


def test_resize_and_crop_helpers():
    assert resize_shorter(Image.new("RGB", (300, 600)), 256).size == (256, 512)
    assert resize_shorter(Image.new("RGB", (500, 375)), 256).size == (341, 256)
    assert center_crop(Image.new("RGB", (341, 256)), 224).size == (224, 224)
    grey = to_tensor(Image.new("L", (3, 2), 255))
    assert grey.shape == (1, 2, 3) and torch.all(grey == 1.0)
    rgba = to_tensor(Image.new("RGBA", (2, 2), (255, 0, 0, 0)))
    assert rgba.shape == (4, 2, 2)


# -- object detector and segmenter --------------------------------------------------------

DETECTOR = """
    import torch
    from torch import nn

    class FakeDetector(nn.Module):
        def forward(self, images):
            return [{"boxes": torch.tensor([[0.0, 0.0, float(img.shape[2]), float(img.shape[1])],
                                            [1.0, 1.0, 2.0, 2.0]]),
                     "labels": torch.tensor([1, 7]),
                     "scores": torch.tensor([0.9, 0.2])} for img in images]
"""

SEGMENTER = """
    import torch
    from torch import nn

    class FakeSegmenter(nn.Module):
        def forward(self, x):
            n, _, h, w = x.shape
            logits = torch.zeros(n, 2, h, w)
            logits[:, 1] = 2.0  # class 1 everywhere
            return {"out": logits}
"""


def vision_dir(model_dir: Path, source: str, handler: str) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "net.py").write_text(textwrap.dedent(source))
    (model_dir / "MAR-INF").mkdir()
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(
        {"model": {"modelName": "v", "handler": handler, "modelFile": "net.py"}}))
    return model_dir


def test_object_detector_filters_by_threshold(tmp_path):
    model_dir = vision_dir(tmp_path, DETECTOR, "object_detector")
    (model_dir / "index_to_name.json").write_text('{"1": "person"}')
    service = load_service(ServiceConfig(model_dir, "v", "object_detector"))
    resps = predict(service, ("body", png("red", (30, 20)), None),
                    ("body", png("blue", (30, 20)), None))
    assert [json.loads(r.value) for r in resps] == [
        [{"person": [0.0, 0.0, 30.0, 20.0], "score": pytest.approx(0.9)}]] * 2


def test_image_segmenter_returns_class_and_probability_per_pixel(tmp_path):
    model_dir = vision_dir(tmp_path, SEGMENTER, "image_segmenter")
    (model_dir / "model-config.yaml").write_text("handler:\n  image_size: 4\n  resize_size: 4\n")
    service = load_service(ServiceConfig(model_dir, "v", "image_segmenter",
                                         config_file="model-config.yaml"))
    result = json.loads(predict(service, ("body", png("red"), None))[0].value)
    assert len(result) == 4 and len(result[0]) == 4
    cls, prob = result[2][3]
    assert cls == 1.0 and prob == pytest.approx(torch.softmax(torch.tensor([0.0, 2.0]), 0)[1])
