"""Cooperative interruption of a batch inside a worker process.

The frontend sends ``SIGUSR1`` when nobody waits for the batch a worker runs any more (every
request in it timed out or was cancelled: a workflow node's ``timeout-ms``). While a batch
runs, the signal raises :class:`BatchInterrupted` wherever the handler is (Python checks
for signals between bytecodes, and a ``time.sleep`` or a blocking read returns early); the
worker answers ``{"op": "interrupted"}`` and takes the next batch. Outside a batch the
signal does nothing. A handler stuck in native code that never returns to Python cannot be
interrupted this way: the frontend replaces such a worker after a grace period.

``BatchInterrupted`` is a ``BaseException`` so that a handler's ``except Exception`` cannot
swallow it.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

INTERRUPT_SIGNAL = signal.SIGUSR1


class BatchInterrupted(BaseException):
    """The frontend abandoned the running batch."""


class BatchGuard:
    """``with guard:`` around one batch: only inside it does the signal interrupt."""

    def __init__(self) -> None:
        self.running = False
        self._holding = False  # a frame is being sent: interrupting now would cut it
        self._held = False  # a signal came while holding

    def install(self) -> None:
        signal.signal(INTERRUPT_SIGNAL, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.running:
            if self._holding:
                self._held = True
                return
            self.running = False  # one signal, one interruption
            raise BatchInterrupted()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Within the batch, defer an interruption to the end of this block (a streamed
        chunk's frame is sent whole or not at all)."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            if self._held and self.running:
                self._held = False
                self.running = False
                raise BatchInterrupted()
            self._held = False

    def __enter__(self) -> "BatchGuard":
        self.running = True
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
