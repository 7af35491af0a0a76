"""Markdown tables and the RESULTS.md document.

Numbers are formatted by magnitude so a column reads at a glance: thousands with separators
and no decimals, small values with three significant digits; ``None`` prints ``n/a``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Table", "fmt_num", "fmt_pct", "fmt_ratio", "format_table", "Target", "format_targets"]


def fmt_num(value: Any) -> str:
    """A cell: numbers by magnitude, None as n/a, anything else as str."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        if magnitude == 0:
            return "0"
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def fmt_ratio(numerator: float | None, denominator: float | None) -> str:
    """``a / b`` as ``2.00×``; n/a when either is missing or b is 0."""
    if numerator is None or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}×"


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} %"


@dataclass
class Table:
    """A titled markdown table; a column is right-aligned when all its cells are numbers
    (or n/a), else left-aligned."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_row(self, cells: list[Any]) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"table {self.title!r} has {len(self.columns)} columns, "
                             f"row has {len(cells)}: {cells!r}")
        self.rows.append(list(cells))


def _numeric_column(table: Table, index: int) -> bool:
    cells = [row[index] for row in table.rows if row[index] is not None and row[index] != ""]
    return bool(cells) and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                               for c in cells)


def format_table(table: Table) -> str:
    """The table as GitHub markdown (no title; see ``format_section``)."""
    head = "| " + " | ".join(table.columns) + " |"
    align = "| " + " | ".join("---:" if _numeric_column(table, i) else "---"
                              for i in range(len(table.columns))) + " |"
    body = ["| " + " | ".join(fmt_num(c) for c in row) + " |" for row in table.rows]
    return "\n".join([head, align, *body])


def format_section(table: Table, level: int = 3) -> str:
    """Title, table and notes."""
    parts = [f"{'#' * level} {table.title}", "", format_table(table)]
    if table.notes:
        parts += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(parts) + "\n"


@dataclass
class Target:
    """One of the issue's targets: what was measured against what it should be.

    ``met`` is None when it could not be measured (``detail`` says why)."""

    name: str
    goal: str
    measured: str
    met: bool | None
    detail: str = ""

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "not measured"
        return "met" if self.met else "MISSED"


def format_targets(targets: list[Target]) -> str:
    table = Table(title="Targets", columns=["target", "goal", "measured", "verdict", "by how much"])
    for t in targets:
        table.add_row([t.name, t.goal, t.measured, t.verdict, t.detail])
    return format_table(table)
