"""The default handler (also ``ts.torch_handler.base_handler``): loads an eager or
TorchScript model and runs preprocess -> inference -> postprocess.

Loading, from the manifest's ``model`` section:

- ``modelFile`` given: an eager model. The file must define exactly one ``nn.Module``
  subclass, built with no arguments; ``serializedFile`` (if any) is its state dict, read with
  ``torch.load(..., weights_only=True)`` (a pickled whole model is refused: unpickling runs
  arbitrary code).
- else a ``serializedFile`` ending in ``.pt``: TorchScript, ``torch.jit.load``;
  ending in ``.onnx``: an onnxruntime session (the ``onnx`` extra).
- ``pt2`` in model-config.yaml: ``torch.compile`` (see model_runtime.py).

The device is ``cuda:<gpu_id>`` when the worker was given a GPU and CUDA is available, else
the CPU. ``index_to_name.json`` in the model directory becomes ``self.mapping``.

``handle`` records ``PredictionTime`` (ms). A request header ``explain: True`` (what the
``/explanations`` endpoint sends) routes to ``explain_handle``; ``describe: True`` to
``describe_handle``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .metrics import timed
from .model_runtime import compile_model, load_onnx
from .util import (PredictionException, import_from_dir, list_classes_from_module,
                   load_label_mapping, row_input)

__all__ = ["BaseHandler"]


class BaseHandler:
    """Base class of the built-in handlers and of most custom ones."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, str] | None = None
        self.device: torch.device | None = None
        self.initialized = False
        self.context: Any = None
        self.model_pt_path: str | None = None
        self.manifest: dict | None = None
        self.map_location: str | None = None
        self.explain = False
        self.target = 0
        self.model_yaml_config: dict = {}

    # -- loading ----------------------------------------------------------------------

    def initialize(self, context: Any) -> None:
        """Load the model named by the manifest onto the worker's device."""
        self.context = context
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")

        self.manifest = context.manifest
        model_section = (self.manifest or {}).get("model")
        if not isinstance(model_section, dict):
            raise ValueError(f"{type(self).__name__} needs a MAR-INF/MANIFEST.json with a "
                             f"'model' section to find the model files")
        model_dir = Path(properties.get("model_dir") or ".")
        serialized = model_section.get("serializedFile")
        self.model_pt_path = str(model_dir / serialized) if serialized else None
        model_file = model_section.get("modelFile")

        if model_file:
            self.model = self._load_pickled_model(str(model_dir), model_file, self.model_pt_path)
            self.model.to(self.device)
        elif self.model_pt_path and self.model_pt_path.endswith(".pt"):
            self.model = self._load_torchscript_model(self.model_pt_path)
        elif self.model_pt_path and self.model_pt_path.endswith(".onnx"):
            self.model = load_onnx(self.model_pt_path, self.device)
        else:
            raise RuntimeError(
                f"No model weights could be loaded: the manifest has no modelFile and its "
                f"serializedFile ({serialized or 'none'}) is not a TorchScript .pt or an "
                f".onnx file")
        self.model.eval()
        if "pt2" in self.model_yaml_config:
            self.model = compile_model(self.model, self.model_yaml_config["pt2"])

        self.mapping = load_label_mapping(model_dir / "index_to_name.json")
        self.initialized = True

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        if not Path(model_pt_path).is_file():
            raise FileNotFoundError(f"serialized file {Path(model_pt_path).name} is not in "
                                    f"the model directory")
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, and still served
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(model_pt_path, map_location=self.device)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(
                f"could not load {Path(model_pt_path).name} as TorchScript ({first}); an eager "
                f"model needs its class file (--model-file) and a state dict") from exc

    def _load_pickled_model(self, model_dir: str, model_file: str,
                            model_pt_path: str | None) -> torch.nn.Module:
        """Build the one ``nn.Module`` class of ``model_file`` and load its state dict."""
        path = Path(model_dir) / model_file
        if not path.is_file():
            raise FileNotFoundError(f"model file {model_file} is not in the model directory")
        module = import_from_dir(Path(model_file).stem, model_dir)
        classes = list_classes_from_module(module, torch.nn.Module)
        if len(classes) != 1:
            names = ", ".join(c.__name__ for c in classes) or "none"
            raise ValueError(f"{model_file} must define exactly one torch.nn.Module class, "
                             f"found {len(classes)} ({names})")
        model = classes[0]()
        if model_pt_path:
            if not Path(model_pt_path).is_file():
                raise FileNotFoundError(f"serialized file {Path(model_pt_path).name} is not in "
                                        f"the model directory")
            try:
                state = torch.load(model_pt_path, map_location=self.device, weights_only=True)
            except Exception as exc:
                raise RuntimeError(
                    f"could not read {Path(model_pt_path).name} as a state dict (weights "
                    f"only): {exc}") from exc
            if not isinstance(state, dict):
                raise TypeError(f"{Path(model_pt_path).name} holds a {type(state).__name__}, "
                                f"not a state dict")
            model.load_state_dict(state)
        return model

    # -- the three steps --------------------------------------------------------------

    @timed
    def preprocess(self, data: list) -> torch.Tensor:
        """Rows of numbers (a JSON body, or ``data``/``body`` fields) -> one batch tensor."""
        rows = []
        for idx, row in enumerate(data):
            value = row_input(row)
            if isinstance(value, (bytes, bytearray, str)):
                raise PredictionException(
                    f"request {idx}: {type(self).__name__} expects a JSON array of numbers "
                    f"(send it with Content-Type: application/json)", 400)
            try:
                rows.append(torch.as_tensor(value))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise PredictionException(f"request {idx}: the input is not an array of "
                                          f"numbers ({exc})", 400) from None
        if not rows:
            return torch.empty(0)
        try:
            return torch.stack(rows).to(self.device)
        except RuntimeError:
            shapes = ", ".join(str(tuple(r.shape)) for r in rows)
            raise PredictionException(f"the inputs of one batch must have the same shape, "
                                      f"got {shapes}", 400) from None

    @timed
    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    @timed
    def postprocess(self, data: Any) -> list:
        return data.tolist()

    def handle(self, data: list, context: Any) -> list:
        """preprocess -> inference -> postprocess for one batch."""
        start = time.perf_counter()
        self.context = context
        if self._is_describe():
            output = [self.describe_handle()]
        else:
            data_preprocess = self.preprocess(data)
            if self._is_explain():
                output = self.explain_handle(data_preprocess, data)
            else:
                output = self.postprocess(self.inference(data_preprocess))
        context.metrics.add_time("PredictionTime",
                                 round((time.perf_counter() - start) * 1000, 3))
        return output

    # -- explanations and description -------------------------------------------------

    def explain_handle(self, data_preprocess: Any, raw_data: list) -> Any:
        """Explanations for the batch: ``get_insights(input tensor, raw input, target)``
        per TorchServe; the target is the request's ``target`` field (default 0)."""
        row = raw_data[0] if raw_data else None
        inputs, target = None, 0
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        return self.get_insights(data_preprocess, inputs, target)

    def get_insights(self, tensor_data: Any, raw_data: Any, target: Any = 0) -> Any:
        raise PredictionException(f"{type(self).__name__} does not support explanations "
                                  f"(it does not override get_insights)", 501)

    def _header_is_true(self, name: str) -> bool:
        context = self.context
        if context is None or not context.request_processor:
            return False
        return context.get_request_header(0, name) == "True"

    def _is_explain(self) -> bool:
        if self._header_is_true("explain"):
            self.explain = True
            return True
        return False

    def _is_describe(self) -> bool:
        return self._header_is_true("describe")

    def describe_handle(self) -> Any:
        """What a ``describe: True`` request returns; override to describe the model."""
        return None

    def get_device(self) -> torch.device | None:
        return self.device
