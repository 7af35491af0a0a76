"""Request envelopes (TorchServe's ``ts.torch_handler.request_envelope``): they reshape a
batch between an orchestrator's request format and the flat list a handler expects, and
the handler's outputs back. ``service_envelope`` names the one every model uses; the Open
Inference Protocol routes use ``kservev2`` for the requests that come through them."""

from __future__ import annotations

import importlib

NAMES = ("body", "json", "kserve", "kservev2")


def envelope_class(name: str) -> type:
    """``"kservev2"`` -> its envelope class (TorchServe's lookup by module name)."""
    if name not in NAMES:
        raise ValueError(f"unknown request envelope {name!r} (one of {', '.join(NAMES)})")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.ENVELOPE
