"""Streaming partial results from a handler (TorchServe's
``send_intermediate_predict_response``, also ``ts.handler_utils.utils``).

A handler calls :func:`send_intermediate_predict_response` any number of times while it
works on a batch; each call sends one chunk per request it names, before the handler's
final return value (the last chunk). The worker process gives the context the function that
puts those chunks on the wire (``context.intermediate_sender``); outside a worker there is
none and the call fails clearly. When every client of the chunks sent has gone away, the
call raises :class:`StreamCancelled`: the handler stops there and its worker is free.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..messages import Response
from .context import Context

__all__ = ["StreamCancelled", "import_class", "send_intermediate_predict_response"]


class StreamCancelled(Exception):
    """Every client this intermediate result was for has disconnected."""


def send_intermediate_predict_response(ret: list, req_id_map: dict, message: str, code: int,
                                       context: Context) -> None:
    """Send ``ret[idx]`` to the client of request ``req_id_map[idx]`` now, for every idx."""
    from .service import encode_output  # service imports this module's exception

    sender = getattr(context, "intermediate_sender", None)
    if sender is None:
        raise RuntimeError("send_intermediate_predict_response needs a running dagserve "
                           "worker (the context has no intermediate_sender)")
    if not isinstance(ret, (list, tuple)) or not isinstance(req_id_map, dict):
        raise TypeError("send_intermediate_predict_response(ret, req_id_map, ...): ret must "
                        "be a list and req_id_map a dict {index: request id}")
    responses = []
    for idx, req_id in req_id_map.items():
        content_type = None
        processors = context.request_processor
        if processors is not None and 0 <= idx < len(processors):
            content_type = processors[idx].get_response_header("content-type")
        responses.append(Response(str(req_id), int(code), encode_output(ret[idx]),
                                  content_type, {}, "" if code < 400 else str(message)))
    sender(responses)


def import_class(class_name: str, module_prefix: str | None = None) -> Any:
    """``"pkg.module.Class"`` (or ``"module.Class"`` under ``module_prefix``) -> the class."""
    if not class_name:
        raise ImportError("class name is not defined")
    module_name, _, name = class_name.rpartition(".")
    if module_prefix:
        module = importlib.import_module(f"{module_prefix}.{module_name}" if module_name
                                         else module_prefix)
    elif module_name:
        module = importlib.import_module(module_name)
    else:
        raise ImportError("module name is not defined.")
    cls = getattr(module, name, None)
    if cls is None:
        raise ImportError(f"class:{name} not found in module:{module_name}.")
    return cls
