"""HTTP responses: a handler's output with the status, content type and headers it set, and
TorchServe's JSON error body."""

from __future__ import annotations

from aiohttp import web

from ..errors import error_body
from ..messages import Response

_ERROR_TYPES = {400: "BadRequestException", 404: "ModelNotFoundException",
                500: "InternalServerException", 503: "ServiceUnavailableException",
                507: "InsufficientStorageException"}


class BareResponse(web.Response):
    """A response that sends no Content-Type when the handler set none, as TorchServe does
    (aiohttp would otherwise add application/octet-stream)."""

    async def _write_headers(self) -> None:
        self.headers.popall("Content-Type", None)
        await super()._write_headers()


def json_response(status: int, payload: bytes) -> web.Response:
    return web.Response(status=status, body=payload, content_type="application/json")


def error_response(status: int, type_name: str, message: str) -> web.Response:
    return json_response(status, error_body(status, type_name, message))


def handler_response(resp: Response) -> web.Response:
    if resp.code >= 400 and not resp.value:
        return error_response(resp.code, _ERROR_TYPES.get(resp.code, "PredictionException"),
                              resp.message or "Prediction failed")
    if resp.code >= 400 and resp.content_type is None:
        return error_response(resp.code, _ERROR_TYPES.get(resp.code, "PredictionException"),
                              resp.message or resp.value.decode("utf-8", "replace"))
    if resp.content_type:
        out = web.Response(status=resp.code, body=resp.value,
                           headers={"Content-Type": resp.content_type})
    else:
        out = BareResponse(status=resp.code, body=resp.value)
    if resp.headers:
        out.headers.update(resp.headers)
    return out
