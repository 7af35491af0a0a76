"""HTTP statuses as gRPC status codes (TorchServe's table), and aborting a call with one."""

from __future__ import annotations

import grpc

from ...errors import DagserveError

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.PERMISSION_DENIED,  # an API switched off (enable_model_api)
    409: grpc.StatusCode.ABORTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 416: grpc.StatusCode.OUT_OF_RANGE,
    499: grpc.StatusCode.CANCELLED, 501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(status: int) -> grpc.StatusCode:
    if 200 <= status < 300:
        return grpc.StatusCode.OK
    return CODES.get(status, grpc.StatusCode.INTERNAL)


async def abort(context: grpc.aio.ServicerContext, exc: DagserveError):
    await context.abort(grpc_code(exc.status), exc.message)
