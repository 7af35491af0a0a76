"""Helpers handlers import (as ``ts.utils.util`` too): the prediction error, label mapping,
class discovery, and loading a module from the model directory."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

__all__ = [
    "PredictionException",
    "get_yaml_config",
    "import_from_dir",
    "list_classes_from_module",
    "load_label_mapping",
    "map_class_to_label",
]


class PredictionException(Exception):
    """Raised by a handler to fail the whole batch with ``error_code`` and ``message``."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


def list_classes_from_module(module: ModuleType, parent_class: type | None = None) -> list[type]:
    """The classes defined in ``module`` itself (imported ones are left out), in name order;
    only subclasses of ``parent_class`` when it is given."""
    classes = [
        member
        for _, member in inspect.getmembers(module, inspect.isclass)
        if member.__module__ == module.__name__
    ]
    if parent_class is not None:
        classes = [c for c in classes if issubclass(c, parent_class)]
    return classes


def load_label_mapping(mapping_file_path: str | Path) -> dict[str, str] | None:
    """Read an ``index_to_name.json`` (``{"0": "cat"}`` or ``{"0": ["n0212", "cat"]}``, the
    last item of a list being the label); ``None`` when the file does not exist."""
    path = Path(mapping_file_path)
    if not path.is_file():
        return None
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(mapping, dict):
        raise ValueError(f'{path.name} must be a JSON object {{"<class index>": "<label>"}}')
    names = mapping.get("object_type_names")
    if isinstance(names, list):  # an older layout some examples used
        return {str(i): str(v) for i, v in enumerate(names)}
    out: dict[str, str] = {}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) and value else value
        if not isinstance(label, str):
            raise ValueError(f"{path.name}: the label of class {key!r} must be a string or a "
                             f"list of strings, got {value!r}")
        out[str(key)] = label
    return out


def map_class_to_label(probs: list, mapping: dict | None = None,
                       lbl_classes: list | None = None) -> list[dict]:
    """One ``{label: probability}`` dict per row of ``probs``; ``lbl_classes`` gives each
    row's class indices (default 0..n-1). A class the mapping lacks is named by its index."""
    if not isinstance(probs, list):
        raise TypeError("map_class_to_label expects a list of rows (call .tolist() first)")
    if mapping is not None and not isinstance(mapping, dict):
        raise TypeError(f"the label mapping must be a dict, got {type(mapping).__name__}")
    if lbl_classes is None:
        width = len(probs[0]) if probs else 0
        lbl_classes = itertools.repeat(range(width), len(probs))
    results = []
    for classes, row in zip(lbl_classes, probs):
        if mapping is None:
            results.append({str(c): p for c, p in zip(classes, row)})
        else:
            results.append({mapping.get(str(c), str(c)): p for c, p in zip(classes, row)})
    return results


def get_yaml_config(yaml_file_path: str | Path) -> dict:
    """A YAML file as a dict (``{}`` for an empty file)."""
    path = Path(yaml_file_path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"model config {path.name} is not valid YAML: {exc}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"model config {path.name} must be a YAML mapping, "
                         f"got {type(config).__name__}")
    return config


# Modules this process loaded from a model directory, by name -> file. Only these may be
# replaced when another model directory brings a file of the same name (in one process that
# happens in tests; a worker serves one model).
_user_modules: dict[str, Path] = {}


def import_from_dir(name: str, model_dir: str | Path) -> ModuleType:
    """Import module ``name``, preferring ``<model_dir>/<name>.py``.

    A file in the model directory is always the one used, even when a module of that name
    was loaded from another model directory before; it is an error (with a clear message)
    when it would shadow a module the process already imported from elsewhere, such as the
    standard library. Without such a file this is a plain import (packages, installed
    modules); ``ModuleNotFoundError`` passes through."""
    directory = Path(model_dir).resolve()
    path = directory / f"{name}.py"
    if "." in name or not path.is_file():
        return importlib.import_module(name)
    existing = sys.modules.get(name)
    if existing is not None:
        existing_file = getattr(existing, "__file__", None)
        if existing_file and Path(existing_file).resolve() == path:
            return existing
        if name not in _user_modules:
            where = existing_file or "built in"
            raise ImportError(f"{path.name} in the model directory has the same name as the "
                              f"module {name!r} this process already uses ({where}); rename "
                              f"the file", name=name)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _user_modules[name] = path
    return module


def as_number(value: Any, what: str) -> float | int:
    """``value`` as an int or float, else a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a number, got {value!r}") from None
    return value


def row_input(row: Any) -> Any:
    """A request's input as TorchServe handlers read it: the ``data`` field, else ``body``
    (a row that is not a dict is its own input)."""
    if not isinstance(row, dict):
        return row
    value = row.get("data")
    return row.get("body") if value is None else value
