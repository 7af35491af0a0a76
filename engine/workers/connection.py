"""The frontend's end of one worker's Unix socket: an asyncio Protocol that cuts the byte
stream into frames and hands each to a callback. No per-frame task or coroutine is created:
the hot path is ``data_received`` -> ``on_frame``."""

from __future__ import annotations

import asyncio
import json
from typing import Callable

from .protocol import HEADER, ProtocolError, parse_header

FrameCallback = Callable[[dict, bytes], None]


class WorkerConnection(asyncio.Protocol):
    def __init__(self, on_frame: FrameCallback, on_lost: Callable[[Exception | None], None]):
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buf = bytearray()
        self._need: tuple[int, int] | None = None
        self.transport: asyncio.Transport | None = None
        self.connected = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.connected.done():
            self.connected.set_result(self)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        try:
            while True:
                if self._need is None:
                    if len(buf) < HEADER.size:
                        return
                    self._need = parse_header(bytes(buf[:HEADER.size]))
                    del buf[:HEADER.size]
                meta_len, body_len = self._need
                if len(buf) < meta_len + body_len:
                    return
                meta = json.loads(bytes(buf[:meta_len]))
                body = bytes(buf[meta_len:meta_len + body_len])
                del buf[:meta_len + body_len]
                self._need = None
                self._on_frame(meta, body)
        except (ProtocolError, ValueError) as exc:
            if self.transport is not None:
                self.transport.close()
            self._on_lost(ProtocolError(str(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
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
