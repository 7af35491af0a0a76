"""``ts.protocol.otf_message_handler``, the part handlers use: sending a partial result
before the final one (``send_intermediate_predict_response``). TorchServe's module also
encodes its Java frontend's binary frames; dagserve's workers speak their own protocol
(engine/workers/protocol.py), so those encoders have no counterpart. The call is handed to
``ts.handler_utils.utils``, which implements streaming where the server supports it; where
it does not, a clear error says so instead of a silent no-op."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["send_intermediate_predict_response"]


def send_intermediate_predict_response(ret: list, req_id_map: dict, message: str,
                                       code: int, context: Any = None) -> None:
    try:
        utils = importlib.import_module("ts.handler_utils.utils")
        send = utils.send_intermediate_predict_response
    except (ImportError, AttributeError):
        raise NotImplementedError(
            "send_intermediate_predict_response: this dagserve build does not stream partial "
            "responses (ts.handler_utils.utils is not available)") from None
    return send(ret, req_id_map, message, code, context)
