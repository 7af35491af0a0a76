"""The ``ts.*`` modules TorchServe handlers import beyond the basics
(``ts.handler_utils.micro_batching``, ``ts.protocol.otf_message_handler``,
``ts.torch_handler.unit_tests.test_utils.mock_context``), BaseHandler's ONNX models
(onnxruntime) and its ``pt2`` torch.compile option."""

from __future__ import annotations

import logging
import sys
import threading

import pytest
import torch
from torch import nn

from dagserve.engine.handler import ts_alias
from dagserve.engine.handler.model_runtime import compile_model, pt2_compile_options


@pytest.fixture(autouse=True)
def _aliases():
    ts_alias.install()
    yield


class Steps:
    """A handler whose steps record the micro-batch and thread they ran on."""

    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()
        self.micro = None

    def preprocess(self, rows):
        return [r * 10 for r in rows]

    def inference(self, rows):
        with self.lock:
            self.seen.append((self.micro.get_micro_batch_idx(), threading.get_ident()))
        if -10 in rows:
            raise ValueError("negative input")
        return [r + 1 for r in rows]

    def postprocess(self, rows):
        return [str(r) for r in rows]


def test_micro_batching_keeps_order_and_uses_the_threads():
    from ts.handler_utils.micro_batching import MicroBatching

    steps = Steps()
    micro = MicroBatching(steps, micro_batch_size=2, parallelism={"inference": 3})
    steps.micro = micro
    try:
        assert micro.parallelism == {"inference": 3}
        assert micro.handle(list(range(9))) == [str(i * 10 + 1) for i in range(9)]
        assert sorted(idx for idx, _ in steps.seen) == [0, 1, 2, 3, 4]
        with pytest.raises(ValueError, match="negative input"):
            micro.handle([1, 2, -1])
        with pytest.raises(ValueError, match="parallelism keys"):
            micro.parallelism = {"decode": 2}
        with pytest.raises(ValueError, match=">= 1"):
            micro.parallelism = {"inference": 0}
    finally:
        micro.shutdown()


def test_otf_message_handler_streams_like_handler_utils():
    from ts.handler_utils.utils import send_intermediate_predict_response as from_utils
    from ts.protocol.otf_message_handler import send_intermediate_predict_response

    assert send_intermediate_predict_response is from_utils


def _save_linear(tmp_path):
    model = nn.Linear(4, 3)
    torch.manual_seed(0)
    nn.init.normal_(model.weight)
    (tmp_path / "model.py").write_text(
        "from torch import nn\n\n\nclass Tiny(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(4, 3)\n\n"
        "    def forward(self, x):\n        return self.fc(x.float())\n")
    torch.save({"fc." + k: v for k, v in model.state_dict().items()}, tmp_path / "model.pt")
    return model


def test_mock_context_initializes_a_base_handler(tmp_path):
    from ts.torch_handler.base_handler import BaseHandler
    from ts.torch_handler.unit_tests.test_utils.mock_context import MockContext

    reference = _save_linear(tmp_path)
    ctx = MockContext(model_pt_file="model.pt", model_dir=str(tmp_path), model_file="model.py",
                      model_name="tiny")
    handler = BaseHandler()
    handler.initialize(ctx)
    rows = [{"body": [1.0, 2.0, 3.0, 4.0]}]
    out = handler.handle(rows, ctx)
    expected = reference(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).tolist()
    assert torch.allclose(torch.tensor(out), torch.tensor(expected), atol=1e-5)
    assert ctx.get_request_header(1, "explain") is False
    ctx.explain = True
    assert ctx.get_request_header(1, "explain") is True


def _onnx_linear(path, weight, bias):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(weight.numpy(), "w"), numpy_helper.from_array(bias.numpy(), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_base_handler_serves_an_onnx_model(tmp_path):
    pytest.importorskip("onnxruntime")
    from ts.torch_handler.base_handler import BaseHandler
    from ts.torch_handler.unit_tests.test_utils.mock_context import MockContext

    torch.manual_seed(1)
    weight, bias = torch.randn(3, 4), torch.randn(3)
    _onnx_linear(tmp_path / "model.onnx", weight, bias)
    ctx = MockContext(model_pt_file="model.onnx", model_dir=str(tmp_path), model_file=None)
    handler = BaseHandler()
    handler.initialize(ctx)
    assert handler.model.get_inputs()[0].name == "x"  # the session stays reachable
    rows = [{"body": [1.0, 0.5, -2.0, 3.0]}, {"body": [0.0, 1.0, 2.0, 3.0]}]
    out = torch.tensor(handler.handle(rows, ctx))
    x = torch.tensor([r["body"] for r in rows])
    assert torch.allclose(out, x @ weight.T + bias, atol=1e-5)


def test_pt2_options_and_compile(caplog):
    assert pt2_compile_options({"compile": {"enable": True, "backend": "eager"}}) == \
        {"backend": "eager"}
    assert pt2_compile_options({"compile": {"enable": False, "backend": "eager"}}) is None
    assert pt2_compile_options("eager") == {"backend": "eager"}
    with pytest.raises(ValueError, match="pt2 must be"):
        pt2_compile_options(3)
    model = nn.Linear(2, 2).eval()
    compiled = compile_model(model, {"compile": {"enable": True, "backend": "eager"}})
    assert compiled is not model
    x = torch.randn(3, 2)
    assert torch.allclose(compiled(x), model(x))
    with caplog.at_level(logging.WARNING, logger="dagserve.handler"):
        assert compile_model(model, {"compile": {"enable": True, "backend": "nope"}}) is model
        assert compile_model(model, {"export": {"aot_compile": True}}) is model
    assert "backend 'nope' is not available" in caplog.text
    assert "pt2.export" in caplog.text


def test_the_new_ts_modules_are_listed_by_the_finder():
    for name in ("ts.handler_utils.micro_batching", "ts.protocol.otf_message_handler",
                 "ts.torch_handler.unit_tests.test_utils.mock_context"):
        assert name in ts_alias.ALIASES
        __import__(name)
        assert name in sys.modules
