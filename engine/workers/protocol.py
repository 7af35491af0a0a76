"""Frames exchanged between the frontend and a worker process over a Unix socket.

A frame is ``struct("!II")`` = (meta length, body length), then ``meta`` (UTF-8 JSON) and
``body`` (raw bytes).  Large payloads never pass through JSON: ``meta`` only describes how
``body`` is cut into pieces.  These frames travel only between dagserve's own processes and
are never unpickled.

Operations (the ``op`` key of ``meta``):

``ready``       worker -> frontend once the handler loaded: ``{"op", "pid"}``
``load_failed`` worker -> frontend when it did not: ``{"op", "message"}`` (then it exits)
``predict``     frontend -> worker: ``{"op", "reqs": [Request.meta ...]}``; body = every
                request's parameter bytes, in order (a request to a workflow's node
                group names its node(s) in ``"n"``: ``Request.nodes``)
``result``      worker -> frontend: ``{"op", "resps": [Response.meta ...], "metrics": [...],
                "t": seconds the handler took for the batch}``; body = every response's
                bytes, in order (an answer of several fused nodes carries
                ``"trail"``: ``Response.trail``)
``partial``     worker -> frontend, any number before the ``result`` of a batch: intermediate
                results a handler streamed (``send_intermediate_predict_response``), laid
                out as ``result`` (responses only for the requests that got a chunk)
``cancel``      frontend -> worker: ``{"op", "ids": [request id ...]}``: their clients went
                away mid-stream; the handler's next intermediate send for them raises

Both sides pay for a frame on every batch, so encoding is kept cheap: one shared compact
JSON encoder (``json.dumps`` with options builds a new encoder per call), one ``join`` that
copies each body once, and on the worker a :class:`FrameReader` that gets a whole small
frame with one ``recv`` instead of three.
"""

from __future__ import annotations

import json
import socket
import struct

from ..messages import Param, Request, Response

HEADER = struct.Struct("!II")
MAX_FRAME = 1 << 31  # a frame larger than this is a protocol error

_encode_meta = json.JSONEncoder(separators=(",", ":")).encode
decode_meta = json.JSONDecoder().decode  # str -> dict; meta is ASCII JSON


class ProtocolError(Exception):
    """The peer sent something that is not a frame."""


def pack(meta: dict, body: bytes | bytearray | memoryview = b"") -> bytes:
    raw = _encode_meta(meta).encode()
    return b"".join((HEADER.pack(len(raw), len(body)), raw, body))


def _pack_parts(meta: dict, chunks: list[bytes], body_len: int) -> bytes:
    raw = _encode_meta(meta).encode()
    chunks[0:0] = (HEADER.pack(len(raw), body_len), raw)
    return b"".join(chunks)


def encode_predict(requests: list[Request]) -> bytes:
    reqs = []
    chunks: list[bytes] = []
    size = 0
    for req in requests:
        params = []
        for p in req.params:
            value = p.value
            params.append([p.name, p.content_type, len(value)])
            chunks.append(value)
            size += len(value)
        item = {"id": req.id, "headers": req.headers, "params": params}
        if req.nodes is not None:
            item["n"] = req.nodes
        reqs.append(item)
    return _pack_parts({"op": "predict", "reqs": reqs}, chunks, size)


def decode_predict(meta: dict, body: bytes | bytearray | memoryview) -> list[Request]:
    view = memoryview(body)
    pos = 0
    out = []
    for r in meta["reqs"]:
        params = []
        for name, ctype, length in r["params"]:
            params.append(Param(name, ctype, bytes(view[pos:pos + length])))
            pos += length
        out.append(Request(r["id"], params, r.get("headers") or {}, r.get("n")))
    return out


def encode_result(responses: list[Response], metrics: list[dict] | None = None,
                  op: str = "result", handler_s: float | None = None) -> bytes:
    resps = []
    chunks: list[bytes] = []
    size = 0
    for r in responses:
        value = r.value
        item: dict = {"id": r.id, "code": r.code, "len": len(value)}
        if r.content_type:
            item["ct"] = r.content_type
        if r.headers:
            item["headers"] = r.headers
        if r.message:
            item["msg"] = r.message
        if r.trail:
            item["trail"] = r.trail
        resps.append(item)
        chunks.append(value)
        size += len(value)
    meta: dict = {"op": op, "resps": resps}
    if handler_s is not None:
        meta["t"] = round(handler_s, 6)
    if metrics:
        meta["metrics"] = metrics
    return _pack_parts(meta, chunks, size)


def encode_partial(responses: list[Response]) -> bytes:
    return encode_result(responses, None, "partial")


def encode_cancel(request_ids: list[str]) -> bytes:
    return pack({"op": "cancel", "ids": request_ids})


def decode_result(meta: dict, body: bytes) -> list[Response]:
    resps = meta["resps"]
    if len(resps) == 1 and resps[0]["len"] == len(body):  # one response: no copy
        r = resps[0]
        return [Response(r["id"], r["code"], bytes(body), r.get("ct"), r.get("headers") or {},
                         r.get("msg", ""), meta.get("t"), r.get("trail"))]
    view = memoryview(body)
    pos = 0
    out = []
    handler_s = meta.get("t")
    for r in resps:
        n = r["len"]
        out.append(Response(r["id"], r["code"], bytes(view[pos:pos + n]), r.get("ct"),
                            r.get("headers") or {}, r.get("msg", ""), handler_s,
                            r.get("trail")))
        pos += n
    return out


def parse_header(header: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    meta_len, body_len = HEADER.unpack_from(header, offset)
    if meta_len + body_len > MAX_FRAME:
        raise ProtocolError(f"frame of {meta_len + body_len} bytes is too large")
    return meta_len, body_len


def split_frame(frame: bytes | bytearray | memoryview) -> tuple[dict, bytes]:
    """A whole frame held in memory (a Ray actor call's argument or result) as
    ``(meta, body)``."""
    view = memoryview(frame)
    if len(view) < HEADER.size:
        raise ProtocolError(f"frame of {len(view)} bytes is shorter than its header")
    meta_len, body_len = parse_header(view)
    end = HEADER.size + meta_len
    if len(view) != end + body_len:
        raise ProtocolError(f"frame holds {len(view)} bytes, its header says "
                            f"{end + body_len}")
    return decode_meta(str(view[HEADER.size:end], "utf-8")), bytes(view[end:])


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
    """One frame, read with exact-size reads (nothing past the frame is consumed)."""
    meta_len, body_len = parse_header(_recv_exact(sock, HEADER.size))
    meta = decode_meta(_recv_exact(sock, meta_len).decode())
    body = _recv_exact(sock, body_len) if body_len else b""
    return meta, body


def send_frame(sock: socket.socket, frame: bytes) -> None:
    sock.sendall(frame)


class FrameReader:
    """Frames from a blocking socket that only this reader reads from: one ``recv`` into a
    reusable buffer usually holds a whole frame (header, meta and body), where exact reads
    cost three system calls. A frame larger than the buffer is read straight into a buffer
    of its own size."""

    def __init__(self, sock: socket.socket, buffer_size: int = 1 << 16):
        self._sock = sock
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0  # unread bytes are self._buf[self._start:self._end]
        self._end = 0

    @property
    def buffered(self) -> bool:
        """Bytes of a next frame are already read (select() on the socket would miss them)."""
        return self._end > self._start

    def _fill(self, need: int) -> None:
        """Make at least ``need`` (<= buffer size) unread bytes available."""
        if self._start + need > len(self._buf):  # move the unread tail to the front
            tail = self._end - self._start
            self._buf[:tail] = self._buf[self._start:self._end]
            self._start, self._end = 0, tail
        while self._end - self._start < need:
            k = self._sock.recv_into(self._view[self._end:])
            if k == 0:
                raise EOFError("peer closed the socket")
            self._end += k

    def read(self) -> tuple[dict, bytes | bytearray]:
        self._fill(HEADER.size)
        meta_len, body_len = parse_header(self._buf, self._start)
        self._start += HEADER.size
        total = meta_len + body_len
        if total <= len(self._buf):
            self._fill(total)
            start = self._start
            view = self._view
            meta = decode_meta(str(view[start:start + meta_len], "utf-8"))
            body = bytes(view[start + meta_len:start + total])
            self._start += total
            return meta, body
        # a large frame: what is buffered, then the rest read into its own buffer
        frame = bytearray(total)
        have = self._end - self._start
        frame[:have] = self._view[self._start:self._end]
        self._start = self._end = 0
        view = memoryview(frame)
        while have < total:
            k = self._sock.recv_into(view[have:])
            if k == 0:
                raise EOFError("peer closed the socket")
            have += k
        meta = decode_meta(frame[:meta_len].decode())
        del view
        del frame[:meta_len]
        return meta, frame
