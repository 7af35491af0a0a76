"""Frames exchanged between the frontend and a worker process over a Unix socket.

A frame is ``struct("!II")`` = (meta length, body length), then ``meta`` (UTF-8 JSON) and
``body`` (raw bytes).  Large payloads never pass through JSON: ``meta`` only describes how
``body`` is cut into pieces.  These frames travel only between dagserve's own processes and
are never unpickled.

Operations (the ``op`` key of ``meta``):

``ready``       worker -> frontend once the handler loaded: ``{"op", "pid"}``
``load_failed`` worker -> frontend when it did not: ``{"op", "message"}`` (then it exits)
``predict``     frontend -> worker: ``{"op", "reqs": [Request.meta ...]}``; body = every
                request's parameter bytes, in order
``result``      worker -> frontend: ``{"op", "resps": [Response.meta ...], "metrics": [...]}``;
                body = every response's bytes, in order
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass, field

HEADER = struct.Struct("!II")
MAX_FRAME = 1 << 31  # a frame larger than this is a protocol error


class ProtocolError(Exception):
    """The peer sent something that is not a frame."""


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


def pack(meta: dict, body: bytes | bytearray | memoryview = b"") -> bytes:
    raw = json.dumps(meta, separators=(",", ":")).encode()
    return HEADER.pack(len(raw), len(body)) + raw + bytes(body)


def encode_predict(requests: list[Request]) -> bytes:
    reqs = []
    chunks = []
    for req in requests:
        params = []
        for p in req.params:
            params.append([p.name, p.content_type, len(p.value)])
            chunks.append(p.value)
        reqs.append({"id": req.id, "headers": req.headers, "params": params})
    return pack({"op": "predict", "reqs": reqs}, b"".join(chunks))


def decode_predict(meta: dict, body: bytes) -> list[Request]:
    view = memoryview(body)
    pos = 0
    out = []
    for r in meta["reqs"]:
        params = []
        for name, ctype, length in r["params"]:
            params.append(Param(name, ctype, bytes(view[pos:pos + length])))
            pos += length
        out.append(Request(r["id"], params, r.get("headers") or {}))
    return out


def encode_result(responses: list[Response], metrics: list[dict] | None = None) -> bytes:
    resps = []
    for r in responses:
        item: dict = {"id": r.id, "code": r.code, "len": len(r.value)}
        if r.content_type:
            item["ct"] = r.content_type
        if r.headers:
            item["headers"] = r.headers
        if r.message:
            item["msg"] = r.message
        resps.append(item)
    meta: dict = {"op": "result", "resps": resps}
    if metrics:
        meta["metrics"] = metrics
    return pack(meta, b"".join(r.value for r in responses))


def decode_result(meta: dict, body: bytes) -> list[Response]:
    view = memoryview(body)
    pos = 0
    out = []
    for r in meta["resps"]:
        n = r["len"]
        out.append(Response(r["id"], r["code"], bytes(view[pos:pos + n]), r.get("ct"),
                            r.get("headers") or {}, r.get("msg", "")))
        pos += n
    return out


def parse_header(header: bytes) -> tuple[int, int]:
    meta_len, body_len = HEADER.unpack(header)
    if meta_len + body_len > MAX_FRAME:
        raise ProtocolError(f"frame of {meta_len + body_len} bytes is too large")
    return meta_len, body_len


# -- blocking side (the worker process) ------------------------------------------------

def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("peer closed the socket")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[dict, bytes]:
    meta_len, body_len = parse_header(_recv_exact(sock, HEADER.size))
    meta = json.loads(_recv_exact(sock, meta_len))
    body = _recv_exact(sock, body_len) if body_len else b""
    return meta, body


def send_frame(sock: socket.socket, frame: bytes) -> None:
    sock.sendall(frame)
