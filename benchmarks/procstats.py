"""Memory and CPU of a server process and all its descendants, read from /proc (Linux).

A server is a frontend plus worker processes (or a JVM plus Python workers for TorchServe),
so every figure sums the whole tree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TreeSample", "process_cpu_seconds", "process_tree", "sample_tree", "tree_cpu_seconds",
           "tree_rss_bytes"]

_PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid [1])."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2:].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` followed by all its live descendants (breadth first); [] when it is gone."""
    if not (_PROC / str(pid)).exists():
        return []
    children = _children_map()
    tree, queue = [pid], [pid]
    while queue:
        for child in children.get(queue.pop(0), ()):
            tree.append(child)
            queue.append(child)
    return tree


def _rss_bytes(pid: int) -> int:
    try:
        text = (_PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return 0  # a zombie has no VmRSS


def _cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) one process has used so far; 0 when it is gone."""
    return _cpu_seconds(pid)


def tree_rss_bytes(pid: int) -> int:
    """Sum of VmRSS over ``pid`` and its descendants (shared pages count once per process)."""
    return sum(_rss_bytes(p) for p in process_tree(pid))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants."""
    return sum(_cpu_seconds(p) for p in process_tree(pid))


@dataclass(frozen=True)
class TreeSample:
    """One look at a process tree: how many processes, their RSS and CPU so far."""

    processes: int
    rss_bytes: int
    cpu_s: float


def sample_tree(pid: int) -> TreeSample:
    pids = process_tree(pid)
    return TreeSample(processes=len(pids), rss_bytes=sum(_rss_bytes(p) for p in pids),
                      cpu_s=sum(_cpu_seconds(p) for p in pids))
