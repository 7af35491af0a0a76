"""``GET /models/{m}?customized=true``: ask a worker of the model for its handler's
``describe_handle`` (a request with the ``describe: True`` header, as TorchServe sends it)
and return what it answered as the describe output's ``customizedMetadata``."""

from __future__ import annotations

from ..errors import ServiceUnavailableError
from ..messages import Param, Request
from ..registry import ModelVersion
from .middleware import new_request_id


async def customized_metadata(mv: ModelVersion) -> str:
    mv.pool.check_can_serve()
    request = Request(new_request_id(), [Param("body", None, b"")], {"describe": "True"})
    response = await mv.queue.submit(request)
    if response.code >= 400:
        raise ServiceUnavailableError(f"Model \"{mv.name}\" could not describe itself: "
                                      f"{response.message or response.code}")
    return response.value.decode("utf-8", errors="replace")
