"""What both archiver command lines share: run the packing step, turn each failure into one
line on stderr and exit status 1, and warn when ``-f`` replaced an existing archive."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from dagserve.archiver.errors import ArchiveError


def one_line(exc: BaseException | str) -> str:
    """An error message folded onto one line."""
    return " ".join(str(exc).split())


def os_error_line(exc: OSError) -> str:
    """An unexpected OS error as one line naming the file."""
    where = f" ({exc.filename})" if exc.filename else ""
    return one_line(f"{exc.strerror or exc}{where}")


def run_pack(prog: str, target: Callable[[], Path], force: bool, pack: Callable[[], object],
             listed_errors: tuple[type[Exception], ...] = ()) -> int:
    """Run ``pack``; exit status 0, or 1 with the reason on stderr. ``listed_errors`` keep
    their own lines (a spec error lists each problem with its line)."""
    try:
        out = target()
        replacing = force and (out.exists() or out.is_symlink())
        pack()
    except ArchiveError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except listed_errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    if replacing:
        print(f"WARNING - Overwrote {out}", file=sys.stderr)
    return 0
