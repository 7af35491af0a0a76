"""BaseHandler: eager and TorchScript models built in temporary model directories."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from dagserve.engine.handler import ts_alias
from dagserve.engine.handler.service import ServiceConfig, load_service
from dagserve.engine.messages import Param, Request

MODEL_PY = """
    import torch
    from torch import nn

    HIDDEN = 3  # not a class

    class Helper:  # not an nn.Module: ignored
        pass

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x.float())
"""


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    ts_alias.install()


def tiny_state() -> dict:
    fc = nn.Linear(4, 3)
    with torch.no_grad():
        fc.weight.copy_(torch.eye(3, 4))  # output = the first three inputs, plus bias
        fc.bias.copy_(torch.tensor([0.0, 10.0, 0.0]))
    return {f"fc.{k}": v for k, v in fc.state_dict().items()}


def write_archive(model_dir: Path, model: dict,
                  files: dict[str, str | bytes] | None = None) -> Path:
    (model_dir / "MAR-INF").mkdir(parents=True, exist_ok=True)
    manifest = {"runtime": "python", "model": {"modelName": "tiny", "handler": "base_handler",
                                               **model}}
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    for name, content in (files or {}).items():
        path = model_dir / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))
    return model_dir


def json_req(rid: str, value) -> Request:
    return Request(rid, [Param("body", "application/json", json.dumps(value).encode())])


def test_eager_model_with_state_dict(tmp_path):
    torch.save(tiny_state(), tmp_path / "tiny.pth")
    write_archive(tmp_path, {"modelFile": "model.py", "serializedFile": "tiny.pth"},
                  {"model.py": MODEL_PY})
    service = load_service(ServiceConfig(tmp_path, "tiny", "base_handler"))
    resps, metrics = service.predict([json_req("a", [1, 2, 3, 4]),
                                      Request("b", [Param("data", "application/json",
                                                          b"[0, 0, 5, 9]")])])
    assert [r.code for r in resps] == [200, 200]
    assert [json.loads(r.value) for r in resps] == [[1.0, 12.0, 3.0], [0.0, 10.0, 5.0]]
    names = [m["name"] for m in metrics]
    assert "PredictionTime" in names and "HandlerTime" in names


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_model(tmp_path):
    scripted = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(2, 2)))
    with torch.no_grad():
        scripted[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        scripted[1].bias.zero_()
    scripted.save(str(tmp_path / "scripted.pt"))
    write_archive(tmp_path, {"serializedFile": "scripted.pt"})
    service = load_service(ServiceConfig(tmp_path, "ts", "base_handler"))
    resps, _ = service.predict([json_req("a", [2.0, 3.0]), json_req("b", [1.0, 1.0])])
    assert [json.loads(r.value) for r in resps] == [[2.0, -3.0], [1.0, -1.0]]


def test_index_to_name_is_loaded_as_mapping(tmp_path):
    torch.save(tiny_state(), tmp_path / "tiny.pth")
    write_archive(tmp_path, {"modelFile": "model.py", "serializedFile": "tiny.pth"},
                  {"model.py": MODEL_PY, "index_to_name.json": '{"0": ["n0", "zero"]}',
                   "mapped.py": """
                      from ts.torch_handler.base_handler import BaseHandler
                      class Mapped(BaseHandler):
                          def postprocess(self, data):
                              return [self.mapping for _ in range(len(data))]
                   """})
    service = load_service(ServiceConfig(tmp_path, "tiny", "mapped.py"))
    resps, _ = service.predict([json_req("a", [0, 0, 0, 0])])
    assert json.loads(resps[0].value) == {"0": "zero"}


def test_wrong_input_for_base_handler_is_a_400(tmp_path):
    torch.save(tiny_state(), tmp_path / "tiny.pth")
    write_archive(tmp_path, {"modelFile": "model.py", "serializedFile": "tiny.pth"},
                  {"model.py": MODEL_PY})
    service = load_service(ServiceConfig(tmp_path, "tiny", "base_handler"))
    resps, _ = service.predict([Request("a", [Param("body", "image/png", b"\x89PNG")])])
    assert resps[0].code == 400 and "expects a JSON array of numbers" in resps[0].message
    resps, _ = service.predict([json_req("a", [1, 2, 3, 4]), json_req("b", [1, 2])])
    assert resps[0].code == 400 and "must have the same shape" in resps[0].message


def test_explain_without_support_is_a_501(tmp_path):
    torch.save(tiny_state(), tmp_path / "tiny.pth")
    write_archive(tmp_path, {"modelFile": "model.py", "serializedFile": "tiny.pth"},
                  {"model.py": MODEL_PY})
    service = load_service(ServiceConfig(tmp_path, "tiny", "base_handler"))
    req = json_req("a", [1, 2, 3, 4])
    req.headers["explain"] = "True"
    resps, _ = service.predict([req])
    assert resps[0].code == 501 and "does not support explanations" in resps[0].message


def two_modules() -> str:
    return MODEL_PY + "\n    class Other(nn.Module):\n        pass\n"


@pytest.mark.parametrize("model, files, error, message", [
    ({"modelFile": "model.py", "serializedFile": "tiny.pth"}, {"model.py": two_modules()},
     ValueError, r"exactly one torch.nn.Module class, found 2 \(Other, Tiny\)"),
    ({"modelFile": "missing.py"}, {}, FileNotFoundError, "model file missing.py"),
    ({"modelFile": "model.py", "serializedFile": "gone.pth"}, {"model.py": MODEL_PY},
     FileNotFoundError, "serialized file gone.pth"),
    ({"serializedFile": "weights.bin"}, {}, RuntimeError, "No model weights could be loaded"),
    ({"serializedFile": "junk.pt"}, {"junk.pt": b"not a zip"}, RuntimeError,
     "could not load junk.pt as TorchScript"),
    ({"modelFile": "model.py", "serializedFile": "tiny.pth"},
     {"model.py": MODEL_PY, "tiny.pth": b"garbage"}, RuntimeError,
     "could not read tiny.pth as a state dict"),
])
def test_load_errors_are_clear(tmp_path, model, files, error, message):
    write_archive(tmp_path, model, files)
    with pytest.raises(error, match=message):
        load_service(ServiceConfig(tmp_path, "tiny", "base_handler"))


def test_pickled_whole_model_is_refused(tmp_path):
    write_archive(tmp_path, {"modelFile": "model.py", "serializedFile": "whole.pth"},
                  {"model.py": MODEL_PY})
    torch.save(nn.Linear(4, 3), tmp_path / "whole.pth")  # a pickled module, not a state dict
    with pytest.raises(RuntimeError, match="weights only"):
        load_service(ServiceConfig(tmp_path, "tiny", "base_handler"))


def test_base_handler_needs_a_model_manifest(tmp_path):
    with pytest.raises(ValueError, match="needs a MAR-INF/MANIFEST.json with a 'model'"):
        from dagserve.engine.handler.base_handler import BaseHandler
        from dagserve.engine.handler.context import Context

        BaseHandler().initialize(Context("m", str(tmp_path), {}, 1, None, "1"))


def test_cpu_is_used_without_a_gpu(tmp_path):
    torch.save(tiny_state(), tmp_path / "tiny.pth")
    write_archive(tmp_path, {"modelFile": "model.py", "serializedFile": "tiny.pth"},
                  {"model.py": MODEL_PY, "dev.py": """
                      from ts.torch_handler.base_handler import BaseHandler
                      class Dev(BaseHandler):
                          def handle(self, data, context):
                              return [str(self.device)] * len(data)
                  """})
    gpu = 0 if not torch.cuda.is_available() else None
    service = load_service(ServiceConfig(tmp_path, "tiny", "dev", gpu_id=gpu))
    resps, _ = service.predict([json_req("a", 1)])
    assert resps[0].value == b"cpu"
