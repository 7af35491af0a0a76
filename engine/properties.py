"""Java ``.properties`` files (config.properties and snapshots) read and written as
``java.util.Properties`` does, escapes included, so TorchServe's files and ours round-trip."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Iterable

def _escape(text: str, is_key: bool) -> str:
    """``java.util.Properties.store`` escaping (without \\u escapes: the file is UTF-8)."""
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\f":
            out.append("\\f")
        elif ch in "=:#!":
            out.append("\\" + ch)
        elif ch == " " and (is_key or i == 0):
            out.append("\\ ")
        else:
            out.append(ch)
    return "".join(out)


def format_properties(props: dict[str, str], comment: str) -> str:
    stamp = datetime.now().astimezone().strftime("%a %b %d %H:%M:%S %Z %Y")
    lines = [f"#{comment}", f"#{stamp}"]
    lines += [f"{_escape(k, True)}={_escape(v, False)}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "f": "\f"}


def _logical_lines(text: str) -> Iterable[str]:
    """Join continuation lines (an odd number of trailing backslashes) as Java does."""
    pending: str | None = None
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")
        if pending is None:
            if not line or line[0] in "#!":
                continue
            current = line
        else:
            current = pending + line
        trailing = len(current) - len(current.rstrip("\\"))
        if trailing % 2 == 1:
            pending = current[:-1]
            continue
        pending = None
        yield current
    if pending is not None:
        yield pending


def _unescape(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_UNESCAPE.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_properties(text: str) -> dict[str, str]:
    """``java.util.Properties.load``: the key ends at the first unescaped ``=``, ``:`` or
    whitespace; escapes (``\\:``, ``\\n``, ``\\uXXXX`` ...) are undone in keys and values."""
    props: dict[str, str] = {}
    for line in _logical_lines(text):
        i, n = 0, len(line)
        while i < n:
            if line[i] == "\\":
                i += 2
                continue
            if line[i] in "=: \t\f":
                break
            i += 1
        key = line[:i]
        rest = line[i:].lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        props[_unescape(key)] = _unescape(rest)
    return props
