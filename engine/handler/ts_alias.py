"""Let handlers written for TorchServe import ``ts.*`` unchanged.

:func:`install` puts a finder first on ``sys.meta_path`` (so it wins even when the real
``torchserve`` package is installed). ``ts.context``, ``ts.torch_handler.base_handler`` and
the others in :data:`ALIASES` resolve to dagserve's own module objects, so ``isinstance``
and ``except PredictionException`` work across both names. ``ts``, ``ts.torch_handler``,
``ts.utils``, ``ts.metrics`` and ``ts.handler_utils`` are empty packages (``ts.__version__``
is the TorchServe version dagserve follows). Any other ``ts.*`` name fails with an
ImportError that lists what is provided.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Sequence

__all__ = ["ALIASES", "PACKAGES", "TS_VERSION", "install", "uninstall"]

TS_VERSION = "0.12.0"
_BASE = __package__  # "dagserve.engine.handler"

ALIASES: dict[str, str] = {
    "ts.context": f"{_BASE}.context",
    "ts.torch_handler.base_handler": f"{_BASE}.base_handler",
    "ts.torch_handler.vision_handler": f"{_BASE}.vision_handler",
    "ts.torch_handler.image_classifier": f"{_BASE}.image_classifier",
    "ts.torch_handler.image_segmenter": f"{_BASE}.image_segmenter",
    "ts.torch_handler.object_detector": f"{_BASE}.object_detector",
    "ts.torch_handler.text_handler": f"{_BASE}.text_handler",
    "ts.torch_handler.text_classifier": f"{_BASE}.text_classifier",
    "ts.utils.util": f"{_BASE}.util",
    "ts.metrics.dimension": f"{_BASE}.metrics",
    "ts.metrics.metric_type_enum": f"{_BASE}.metrics",
    "ts.metrics.metric_cache_errors": f"{_BASE}.metrics",
    "ts.handler_utils.timer": f"{_BASE}.metrics",
    "ts.handler_utils.micro_batching": f"{_BASE}.micro_batching",
    "ts.protocol.otf_message_handler": f"{_BASE}.otf_message_handler",
    "ts.torch_handler.unit_tests.test_utils.mock_context": f"{_BASE}.mock_context",
    # the request envelopes and streaming helpers (protocols)
    "ts.torch_handler.request_envelope": f"{_BASE}.request_envelope",
    "ts.torch_handler.request_envelope.base": f"{_BASE}.request_envelope.base",
    "ts.torch_handler.request_envelope.body": f"{_BASE}.request_envelope.body",
    "ts.torch_handler.request_envelope.json": f"{_BASE}.request_envelope.json",
    "ts.torch_handler.request_envelope.kserve": f"{_BASE}.request_envelope.kserve",
    "ts.torch_handler.request_envelope.kservev2": f"{_BASE}.request_envelope.kservev2",
    "ts.handler_utils.utils": f"{_BASE}.streaming",
}
PACKAGES = frozenset({"ts", "ts.torch_handler", "ts.utils", "ts.metrics", "ts.handler_utils",
                      "ts.protocol", "ts.torch_handler.unit_tests",
                      "ts.torch_handler.unit_tests.test_utils"})


class _AliasLoader(importlib.abc.Loader):
    """Hands out an existing module (or an empty package) under a ``ts.*`` name."""

    def __init__(self, target: str | None) -> None:
        self._target = target
        self._saved_spec = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        if self._target is None:
            return None  # default creation: an empty package
        module = importlib.import_module(self._target)
        self._saved_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        if self._target is None:
            if module.__name__ == "ts":
                module.__version__ = TS_VERSION
            return
        # The import system stamped the alias spec on the shared module: give it back its own.
        module.__spec__ = self._saved_spec


class TsAliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``ts`` and its aliased submodules; nothing else."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "ts" and not fullname.startswith("ts."):
            return None
        if fullname in PACKAGES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(None), is_package=True)
        if fullname in ALIASES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(ALIASES[fullname]))
        provided = ", ".join(sorted(ALIASES))
        raise ModuleNotFoundError(f"No module named {fullname!r}: dagserve provides these "
                                  f"TorchServe modules: {provided}", name=fullname)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent). ``ts`` modules imported
    before (the real TorchServe's) are dropped so the next import gets dagserve's."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TsAliasFinder)]
    sys.meta_path.insert(0, TsAliasFinder())
    for name in [n for n in sys.modules if n == "ts" or n.startswith("ts.")]:
        if not _is_ours(name, sys.modules[name]):
            del sys.modules[name]


def _is_ours(name: str, module: ModuleType) -> bool:
    if name in ALIASES:
        return module is sys.modules.get(ALIASES[name])
    spec = getattr(module, "__spec__", None)
    return spec is not None and isinstance(spec.loader, _AliasLoader)


def uninstall() -> None:
    """Remove the finder and the ``ts`` modules it provided (for tests)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TsAliasFinder)]
    for name in [n for n in sys.modules if n == "ts" or n.startswith("ts.")]:
        del sys.modules[name]
