"""``ts.torch_handler.unit_tests.test_utils.mock_context.MockContext``: the context
TorchServe's handler unit tests build by hand to call ``initialize`` without a server
(manifest with the serialized and model files, ``model_dir``, ``gpu_id`` when CUDA is
present, metrics, the model's YAML config)."""

from __future__ import annotations

import os
from typing import Any

import torch

from .metrics import MetricsCache
from .util import get_yaml_config

__all__ = ["MockContext"]


class MockContext:
    def __init__(self, model_pt_file: str | None = "model.pt",
                 model_dir: str = "ts/torch_handler/unit_tests/models/tmp",
                 model_file: str | None = "model.py", gpu_id: str | None = "0",
                 model_name: str = "mnist", model_yaml_config_file: str | None = None) -> None:
        self.model_name = model_name
        self.manifest: dict[str, Any] = {"model": {}}
        if model_pt_file:
            self.manifest["model"]["serializedFile"] = model_pt_file
        if model_file:
            self.manifest["model"]["modelFile"] = model_file
        self.system_properties: dict[str, Any] = {"model_dir": model_dir}
        if torch.cuda.is_available() and gpu_id:
            self.system_properties["gpu_id"] = gpu_id
        self.explain = False
        self.metrics = MetricsCache(model_name)
        self.model_yaml_config: dict = {}
        if model_yaml_config_file:
            self.model_yaml_config = get_yaml_config(
                os.path.join(model_dir, model_yaml_config_file))
        self.request_processor = None
        self.request_ids = None

    def get_request_header(self, idx: Any, exp: Any) -> bool:
        """True for an explanation request when ``self.explain`` is set (TorchServe's)."""
        return bool(idx and exp and self.explain)
