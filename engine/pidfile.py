"""The pid file of a background server: one per working directory, recording the pid and
the process's start time so that a recycled pid is never mistaken for the server."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_time: str | None  # /proc/<pid>/stat field 22; None where there is no /proc


def pid_file_path(workdir: Path | None = None) -> Path:
    workdir = (workdir or Path.cwd()).resolve()
    digest = hashlib.sha1(str(workdir).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"dagserve-{digest}.pid"


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state on (index 0 = state), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def process_start_time(pid: int) -> str | None:
    fields = proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def is_alive(record: PidRecord) -> bool:
    """The process the record names still runs (not a zombie, not a reused pid)."""
    if Path("/proc/self/stat").exists():
        fields = proc_stat(record.pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return record.start_time is None or fields[19] == record.start_time
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid_file(path: Path) -> PidRecord | None:
    try:
        parts = path.read_text().split()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return None
    if not parts or not parts[0].isdigit():
        return None
    return PidRecord(int(parts[0]), parts[1] if len(parts) > 1 else None)


class AlreadyRunning(Exception):
    def __init__(self, record: PidRecord) -> None:
        super().__init__(f"pid {record.pid}")
        self.record = record


def write_pid_file(path: Path, pid: int | None = None) -> PidRecord:
    """Claim the pid file for ``pid`` (default: this process). Raises AlreadyRunning when it
    names another live process; a stale one is replaced."""
    pid = os.getpid() if pid is None else pid
    record = PidRecord(pid, process_start_time(pid))
    content = f"{record.pid} {record.start_time or ''}".strip() + "\n"
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            existing = read_pid_file(path)
            if existing is not None and existing.pid != pid and is_alive(existing):
                raise AlreadyRunning(existing) from None
            _unlink(path)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(content)
        return record
    raise OSError(f"cannot claim pid file {path}")


def remove_pid_file(path: Path, pid: int | None = None) -> None:
    """Remove the pid file if it still names ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    record = read_pid_file(path)
    if record is not None and record.pid == pid:
        _unlink(path)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def running_server(path: Path) -> PidRecord | None:
    record = read_pid_file(path)
    if record is None:
        return None
    if is_alive(record):
        return record
    _unlink(path)
    return None
