"""Reading management parameters (query string or JSON body) with 400s that name the
parameter, and TorchServe's list pagination."""

from __future__ import annotations

import json
from typing import Any, Mapping

from aiohttp import web

from dagserve.archiver.pack import NAME_PATTERN

from ..errors import BadRequestError

MAX_PAGE = 100


async def request_params(request: web.Request) -> dict[str, Any]:
    """Query parameters, overlaid by a JSON object body when there is one."""
    params: dict[str, Any] = dict(request.query)
    if request.can_read_body and request.content_type == "application/json":
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            raise BadRequestError("Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequestError("Request body must be a JSON object")
        params.update(body)
    return params


def int_param(params: Mapping[str, Any], name: str, default: int | None = None,
              minimum: int | None = 0) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequestError(f"Parameter {name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise BadRequestError(f"Parameter {name} must be >= {minimum}, got {number}")
    return number


def name_param(params: Mapping[str, Any], key: str) -> str | None:
    """A model or workflow name: TorchServe's pattern, checked on the whole string."""
    value = params.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise BadRequestError(f"Parameter {key} must match ^{NAME_PATTERN.pattern}$, "
                              f"got {value!r}")
    return value


def bool_param(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise BadRequestError(f"Parameter {name} must be true or false, got {value!r}")


def paginate(items: list, params: Mapping[str, Any]) -> tuple[list, str | None]:
    """TorchServe's paging: ``limit`` (<= 100) items from offset ``next_page_token``."""
    limit = int_param(params, "limit", MAX_PAGE, minimum=0) or MAX_PAGE
    limit = min(limit, MAX_PAGE)
    start = int_param(params, "next_page_token", 0, minimum=0) or 0
    page = items[start:start + limit]
    token = str(start + limit) if start + limit < len(items) else None
    return page, token


def json_ok(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload, indent=2).encode(),
                        content_type="application/json")


def status_message(message: str, status: int = 200) -> web.Response:
    return json_ok({"status": message}, status)
