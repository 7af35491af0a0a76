"""``ts.protocol.otf_message_handler``, the part handlers use: sending a partial result
before the final one (``send_intermediate_predict_response``, the same function as
``ts.handler_utils.utils``'s). TorchServe's module also encodes its Java frontend's binary
frames; dagserve's workers speak their own protocol (engine/workers/protocol.py), so those
encoders have no counterpart."""

from __future__ import annotations

from .streaming import send_intermediate_predict_response

__all__ = ["send_intermediate_predict_response"]
