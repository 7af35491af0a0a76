"""Token authorization on the gRPC ports, with the keys of the HTTP APIs: metadata
``authorization: Bearer <key>`` (the inference key on the inference port, the management
key on the management port); anything else is UNAUTHENTICATED."""

from __future__ import annotations

import grpc

from ...errors import TokenAuthError


def _deny_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    message = TokenAuthError().message

    async def deny(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - an async generator that never yields

    streaming_out = handler.response_streaming
    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}
    return make[(handler.request_streaming, streaming_out)](
        deny_stream if streaming_out else deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys, kind: str):
        self._check = keys.check
        self._kind = kind

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        token = next((value for key, value in details.invocation_metadata or ()
                      if key == "authorization"), None)
        if isinstance(token, bytes):
            token = token.decode("utf-8", "replace")
        if self._check(self._kind, token):
            return handler
        return _deny_handler(handler)
