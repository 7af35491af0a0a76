"""The envelope interface: ``handle(data, context)`` parses the batch, calls the wrapped
handler, formats what it returned."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable


class BaseEnvelope(ABC):
    def __init__(self, handle_fn: Callable[[Any, Any], Any]):
        self._handle_fn = handle_fn
        self.context = None

    def handle(self, data: Any, context: Any) -> Any:
        self.context = context
        if data:
            data = self.parse_input(data)
        results = self._handle_fn(data, context)
        if results:
            results = self.format_output(results)
        return results

    @abstractmethod
    def parse_input(self, data: list) -> Any:
        """The batch as the orchestrator sent it -> what the handler gets."""

    @abstractmethod
    def format_output(self, data: Any) -> list:
        """What the handler returned -> one output per request."""


def row_body(row: dict) -> Any:
    """A request's payload: its ``data`` field, else its body."""
    return row.get("data") or row.get("body")
