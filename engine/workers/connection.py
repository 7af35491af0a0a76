"""The frontend's end of one worker's Unix socket: an asyncio Protocol that cuts the byte
stream into frames and hands each to a callback. No per-frame task or coroutine is created:
the hot path is ``data_received`` -> ``on_frame``. A chunk that holds whole frames (the
usual case) is parsed where it lies; only a partial frame is kept for the next chunk."""

from __future__ import annotations

import asyncio
from typing import Callable

from .protocol import HEADER, ProtocolError, decode_meta, parse_header

FrameCallback = Callable[[dict, bytes], None]


class WorkerConnection(asyncio.Protocol):
    def __init__(self, on_frame: FrameCallback, on_lost: Callable[[Exception | None], None],
                 accept: Callable[["WorkerConnection"], bool] | None = None):
        """``accept`` (if given) decides, once connected, whether this peer is the worker;
        a refused connection is closed and reports nothing."""
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._accept = accept
        self._refused = False
        self._buf = bytearray()  # the start of a frame whose end has not arrived yet
        self._need = 0  # bytes that frame needs (its header's, until the header is in)
        self.transport: asyncio.Transport | None = None
        self.connected = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._accept is not None and not self._accept(self):
            self._refused = True
            transport.close()
            return
        if not self.connected.done():
            self.connected.set_result(self)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf:  # the rest of a frame that began in an earlier chunk
            buf += data
            if len(buf) < self._need:
                return
            data = bytes(buf)
            buf.clear()
        size = len(data)
        pos = 0
        try:
            while size - pos >= HEADER.size:
                meta_len, body_len = parse_header(data, pos)
                start = pos + HEADER.size
                end = start + meta_len + body_len
                if end > size:
                    break
                meta = decode_meta(str(data[start:start + meta_len], "utf-8"))
                body = data[start + meta_len:end]
                pos = end
                self._on_frame(meta, body)
            if pos < size:
                buf += memoryview(data)[pos:]
                self._need = (HEADER.size + sum(parse_header(buf)) if len(buf) >= HEADER.size
                              else HEADER.size)
        except (ProtocolError, ValueError) as exc:
            if self.transport is not None:
                self.transport.close()
            self._on_lost(ProtocolError(str(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("worker closed before it connected"))
        self._on_lost(exc)

    def send(self, frame: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("worker connection is closed")
        self.transport.write(frame)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
