"""The request and response types every side of the server shares: the frontends build a
:class:`Request`, the scheduler passes them between nodes, a worker's handler reads it and
answers with a :class:`Response`. The wire format that carries them between processes is
``workers/protocol.py``; these types know nothing of it."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    # in a worker that serves several nodes of one workflow
    # (handler/node_group.py): the node to run, or ``a:0.3,b:1`` (a chain in one call,
    # with each node's time limit in seconds)
    nodes: str | None = None


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
    # nodes run in one worker call: code, microseconds, bytes out for each node
    # that ran, in order, as one flat list (handler/node_group.py)
    trail: list | None = None
