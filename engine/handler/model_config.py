"""An archive's model-config.yaml, read the same way by the server (worker settings, batch
size ...) and by the worker (``context.model_yaml_config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .util import get_yaml_config


def model_config_name(manifest: dict[str, Any], override: str | None = None) -> str | None:
    """The config file to read: ``override`` (a registration's), else the manifest's
    ``model.configFile``; None when there is none."""
    if override:
        return override
    model = manifest.get("model")
    return model.get("configFile") if isinstance(model, dict) else None


def load_model_config(model_dir: Path, manifest: dict[str, Any],
                      override: str | None = None) -> dict[str, Any]:
    """The model config as a dict (``{}`` without one). A relative name is inside
    ``model_dir``. FileNotFoundError when it is named but missing, ValueError when it is
    not a YAML mapping."""
    name = model_config_name(manifest, override)
    if not name:
        return {}
    path = Path(name)
    if not path.is_absolute():
        path = Path(model_dir) / path
    if not path.is_file():
        raise FileNotFoundError(f"model config file {name} not found")
    return get_yaml_config(path)
