"""Turn a manifest's ``handler`` string into the callable that serves each batch.

The rules (TorchServe's): split on the first ``:`` into module and function (default
``handle``); drop a ``.py`` suffix and any directory part; import the module from the model
directory, and only when no such module exists use the built-in handler of that name. If
the module has the function, it is a function handler, called once now as
``handle(None, context)``. Otherwise the module must define exactly one class: it is built
with no arguments, ``initialize(context)`` is called, and its ``handle`` serves the batches.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from dagserve.archiver.handler_names import BUILTIN_HANDLERS, parse_handler

from .util import import_from_dir, list_classes_from_module

__all__ = ["BUILTIN_HANDLERS", "EntryPoint", "load_handler", "split_handler"]

EntryPoint = Callable[[list | None, Any], Any]


def split_handler(handler: str) -> tuple[str, str | None]:
    """``"dir/my_handler.py:fn"`` -> ``("my_handler", "fn")``."""
    name = parse_handler(handler)
    return name.module, name.function


def _import_handler_module(module_name: str, model_dir: Path) -> ModuleType:
    try:
        module = import_from_dir(module_name, model_dir)
        # A bare folder of that name somewhere on sys.path (a namespace package, e.g. the
        # server started next to examples/image_classifier/) is not a handler.
        if getattr(module, "__file__", None) is not None or module_name not in BUILTIN_HANDLERS:
            return module
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the handler file exists but imports something missing
    if module_name in BUILTIN_HANDLERS:
        return importlib.import_module(f"{__package__}.{module_name}")
    raise ImportError(f"handler module {module_name!r} not found: there is no "
                      f"{module_name}.py in the model directory and no built-in handler of "
                      f"that name (built-ins: {', '.join(BUILTIN_HANDLERS)})")


def load_handler(handler: str, model_dir: str | Path, context: Any) -> EntryPoint:
    """Import and initialize the handler; return its per-batch entry point.

    Puts ``model_dir`` first on ``sys.path`` so the handler's own imports find the files
    next to it."""
    directory = Path(model_dir).resolve()
    if str(directory) not in sys.path[:1]:
        sys.path.insert(0, str(directory))
    module_name, function_name = split_handler(handler)
    module = _import_handler_module(module_name, directory)

    function = getattr(module, function_name or "handle", None)
    if function is not None:
        if not callable(function):
            raise TypeError(f"{module_name}.{function_name or 'handle'} is not callable")
        function(None, context)
        return function
    if function_name is not None:
        raise AttributeError(f"handler module {module_name!r} has no function "
                             f"{function_name!r}")

    classes = list_classes_from_module(module)
    if len(classes) != 1:
        names = ", ".join(c.__name__ for c in classes) or "none"
        raise ValueError(f"handler module {module_name!r} must define a handle(data, context) "
                         f"function or exactly one class, found {len(classes)} classes "
                         f"({names})")
    service = classes[0]()
    entry = getattr(service, "handle", None)
    if not callable(entry):
        raise TypeError(f"handler class {classes[0].__name__} has no handle(data, context) "
                        f"method")
    initialize = getattr(service, "initialize", None)
    if callable(initialize):
        initialize(context)
    return entry
