"""The server's private work directory (unpacked models, downloads): created at start in the
temporary directory, 0700, removed at a clean stop.

A server killed with SIGKILL cannot remove it, so each work directory records its owner
(``owner.json``: pid and the process's start time, which tells a reused pid apart) and the
next server to start removes every ``dagserve-*`` directory of the same user whose owner is
gone. Directories without that record (older versions, other programs) are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("dagserve.server")

PREFIX = "dagserve-"
OWNER_FILE = "owner.json"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (from /proc), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]


def _owner_alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return True  # unreadable: do not guess
    if not Path("/proc").is_dir():  # no /proc: only the pid can be checked
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return _start_time(pid) == owner.get("start")


def remove_stale(tmp: Path | None = None) -> list[Path]:
    """Remove the work directories of servers that died without cleaning up."""
    tmp = Path(tmp or tempfile.gettempdir())
    removed = []
    uid = os.getuid()
    for path in tmp.glob(PREFIX + "*"):
        try:
            if path.is_symlink() or not path.is_dir() or path.stat().st_uid != uid:
                continue
            owner = json.loads((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(owner, dict) and not _owner_alive(owner):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d work director%s left by servers that were killed", len(removed),
                 "y" if len(removed) == 1 else "ies")
    return removed


def create() -> Path:
    """A new private work directory that names its owner (this process)."""
    remove_stale()
    path = Path(tempfile.mkdtemp(prefix=PREFIX))
    os.chmod(path, 0o700)
    owner = {"pid": os.getpid(), "start": _start_time(os.getpid())}
    (path / OWNER_FILE).write_text(json.dumps(owner))
    return path
