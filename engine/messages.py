"""The request and response types every side of the server shares: the frontends build a
:class:`Request`, the scheduler passes them between nodes, a worker's handler reads it and
answers with a :class:`Response`. The wire format that carries them between processes is
``workers/protocol.py``; these types know nothing of it."""

from __future__ import annotations

from dataclasses import dataclass, field

# The function node(s) a request is for, in a worker that serves several function nodes of
# one workflow (handler/function_group.py): ``node`` or ``a,b,c`` (a chain in one call)
NODES_HEADER = "dagserve-nodes"


@dataclass(slots=True)
class Param:
    """One input of a request: ``body`` for a raw body, else a form field name."""

    name: str
    content_type: str | None
    value: bytes


@dataclass(slots=True)
class Request:
    """One inference request as a worker sees it."""

    id: str
    params: list[Param]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Response:
    """One handler output: ``code`` 200 with ``value``, or an error ``code`` and ``message``."""

    id: str
    code: int = 200
    value: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""
    handler_s: float | None = None  # the worker's time for the batch it came in (traces)
    # function nodes run in one worker call: [node, code, seconds, bytes out] per node that
    # ran (handler/function_group.py)
    trail: list | None = None
