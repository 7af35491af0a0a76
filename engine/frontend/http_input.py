"""Turn an HTTP request into the worker protocol's parameters, as TorchServe does: a raw body
is ``body`` (with its content type), multipart and urlencoded form fields keep their names,
and query-string parameters are passed along as extra fields."""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequestError
from ..messages import Param

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def read_params(request: web.BaseRequest) -> list[Param]:
    raw_ctype = request.headers.get("Content-Type")
    # aiohttp's parsed content type only when it may be a form (a raw body is the hot path)
    ctype = request.content_type if raw_ctype and \
        raw_ctype.lower().startswith(FORM_TYPES) else None
    if ctype is not None:
        try:
            params = await _read_form(request, ctype)
        except ValueError as exc:  # no boundary, a broken part, bad encoding ...
            raise BadRequestError(f"Invalid {ctype} body: {exc}") from None
    else:
        params = [Param("body", raw_ctype, await request.read())]
    if request.query_string:
        for key, value in request.query.items():
            params.append(Param(key, None, value.encode()))
    return params


async def _read_form(request: web.BaseRequest, ctype: str) -> list[Param]:
    params: list[Param] = []
    if ctype == "multipart/form-data":
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            value = await part.read(decode=False)  # type: ignore[union-attr]
            params.append(Param(part.name or "data",  # type: ignore[union-attr]
                                part.headers.get("Content-Type"), bytes(value)))
    elif ctype == "application/x-www-form-urlencoded":
        form = await request.post()
        for key, value in form.items():
            raw = value.encode() if isinstance(value, str) else value.file.read()  # type: ignore[union-attr]
            params.append(Param(key, None, raw))
    return params
