"""The worker's side of streaming: put a handler's intermediate results on the wire, and
notice meanwhile what the frontend sent (batches held behind the running one are kept for
the serve loop; ``cancel`` frames mark requests whose client went away)."""

from __future__ import annotations

import select
import socket
from collections import deque

from ..handler.streaming import StreamCancelled
from ..messages import Response
from . import protocol
from .interrupt import BatchGuard


class IntermediateChannel:
    def __init__(self, sock: socket.socket, reader: protocol.FrameReader, guard: BatchGuard):
        self._sock = sock
        self._reader = reader
        self._guard = guard  # an interruption waits until a frame is sent (or read) whole
        self.held: deque[tuple[dict, bytes]] = deque()
        self.cancelled: set[str] = set()

    def next_frame(self) -> tuple[dict, bytes]:
        """The next frame for the serve loop: one read while streaming, else the socket."""
        if self.held:
            return self.held.popleft()
        return self._reader.read()

    def send(self, responses: list[Response]) -> None:
        """Send the chunks whose clients are still there; raise StreamCancelled when none is."""
        with self._guard.hold():
            self._poll()
            live = [r for r in responses if r.id not in self.cancelled]
            if not live:
                raise StreamCancelled("the client went away; the stream stops")
            self._sock.sendall(protocol.encode_partial(live))

    def _poll(self) -> None:
        """Read every frame that has arrived, without waiting for more."""
        while self._reader.buffered or select.select([self._sock], [], [], 0)[0]:
            meta, body = self._reader.read()
            if meta.get("op") == "cancel":
                self.cancelled.update(meta.get("ids") or ())
            else:
                self.held.append((meta, body))
