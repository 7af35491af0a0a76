"""Problems found in a workflow spec, and the exception that carries all of them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec. ``line``/``col`` are 1-based; None when there is no place."""

    line: int | None
    col: int | None
    node: str | None
    message: str

    def format(self, source: str | None = None) -> str:
        """``source:line:col: node 'n': message`` (the parts that are known)."""
        where = [p for p in (source, self.line, self.col if self.line is not None else None)
                 if p is not None]
        prefix = ":".join(str(p) for p in where)
        text = f"node '{self.node}': {self.message}" if self.node is not None else self.message
        return f"{prefix}: {text}" if prefix else text

    def sort_key(self) -> tuple[int, int]:
        return (self.line or 0, self.col or 0)


class SpecError(Exception):
    """A workflow spec that cannot be used; ``problems`` lists every reason at once."""

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        if not problems:
            raise ValueError("SpecError needs at least one problem")
        self.problems: list[Problem] = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(p.format(self.source) for p in self.problems)
