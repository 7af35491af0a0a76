"""The two loading paths of BaseHandler beyond eager and TorchScript models, as TorchServe
0.12 has them:

- an ``.onnx`` serialized file becomes an onnxruntime ``InferenceSession`` (the optional
  ``onnx`` extra; CUDA provider first when the worker has a GPU). :class:`OnnxModel` makes it
  callable like a module, so BaseHandler's ``inference`` runs it as is, and ``.run`` and
  ``.get_inputs`` (what TorchServe's ONNX handlers call) still work;
- ``pt2`` in model-config.yaml compiles the model with ``torch.compile``:
  ``pt2: {compile: {enable: true, backend: inductor, mode: ...}}``, or the older
  ``pt2: <backend>`` / ``pt2: {backend: ..., ...}``. An unknown backend, a torch without
  ``torch.compile`` or a failing compile leave the model uncompiled with a warning that
  says why.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

log = logging.getLogger("dagserve.handler")


class OnnxModel:
    """An onnxruntime session that takes and returns tensors like an ``nn.Module``."""

    def __init__(self, session: Any, device: torch.device) -> None:
        self.session = session
        self.device = device

    def __call__(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | list:
        feeds = {self.session.get_inputs()[0].name: data.detach().cpu().numpy()}
        for extra, value in zip(self.session.get_inputs()[1:], args):
            feeds[extra.name] = value.detach().cpu().numpy() if isinstance(
                value, torch.Tensor) else value
        outputs = [torch.from_numpy(out).to(self.device)
                   for out in self.session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else outputs

    def __getattr__(self, name: str) -> Any:  # run, get_inputs, get_outputs ...
        return getattr(self.session, name)

    def eval(self) -> "OnnxModel":
        return self

    def to(self, *_: Any, **__: Any) -> "OnnxModel":
        return self


def load_onnx(path: str, device: torch.device) -> OnnxModel:
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeError(f"{os.path.basename(path)} is an ONNX model: install onnxruntime "
                           f"(pip install 'dagserve[onnx]') to serve it") from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the worker's share of the cores
    return OnnxModel(ort.InferenceSession(path, sess_options=options, providers=providers),
                     device)


def pt2_compile_options(pt2: Any) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from a model-config ``pt2`` value; None when
    compiling is not asked for."""
    if isinstance(pt2, str):
        return {"backend": pt2}
    if not isinstance(pt2, dict):
        raise ValueError(f"pt2 must be a backend name or a mapping, got {pt2!r}")
    if "compile" in pt2:
        options = dict(pt2["compile"] or {})
        if options.pop("enable", False) is not True:
            return None
        return options
    if "export" in pt2:
        log.warning("pt2.export (AOT-compiled .so models) is not supported; the model is "
                    "served uncompiled")
        return None
    return dict(pt2)


def compile_model(model: Any, pt2: Any) -> Any:
    """The model compiled as ``pt2`` asks, or the model itself with a warning saying why
    it could not be."""
    options = pt2_compile_options(pt2)
    if options is None:
        return model
    if not hasattr(torch, "compile"):
        log.warning("pt2: torch %s has no torch.compile; serving the model uncompiled",
                    torch.__version__)
        return model
    backend = options.get("backend")
    if backend is not None:
        from torch import _dynamo

        available = _dynamo.list_backends(exclude_tags=())
        if backend not in available:
            log.warning("pt2: backend %r is not available here (available: %s); serving the "
                        "model uncompiled", backend, ", ".join(sorted(available)))
            return model
    try:
        compiled = torch.compile(model, **options)
    except Exception as exc:  # a bad option must not keep the model from serving
        log.warning("pt2: torch.compile(%s) failed (%s); serving the model uncompiled",
                    options, exc)
        return model
    log.info("compiled the model with torch.compile(%s)", options)
    return compiled
