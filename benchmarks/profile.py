"""Where a server's time goes, sampled from outside with py-spy while a load runs.

``py-spy record --subprocesses --format raw`` writes collapsed stacks
(``process;[child process;]frame;frame;... count``); this module sums them into the frames that were on
CPU most often (self time), how often each frame was on a stack at all (inclusive time),
and each process's share (frontend vs workers). py-spy needs ptrace rights on the server
(root, or ``kernel.yama.ptrace_scope=0``); without py-spy or those rights there is no
profile, and the report says so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Profile", "ProfileError", "find_py_spy", "parse_collapsed", "start_record"]

_PROCESS_FRAME = re.compile(r"^process \d+:")


class ProfileError(RuntimeError):
    """py-spy is missing or could not sample the process."""


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (``pip install py-spy``), else on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.is_file() else shutil.which("py-spy")


@dataclass
class Profile:
    """Summed samples: total, per process, per frame (self and inclusive)."""

    samples: int = 0
    by_process: Counter = field(default_factory=Counter)
    self_frames: Counter = field(default_factory=Counter)
    inclusive_frames: Counter = field(default_factory=Counter)

    def top_self(self, n: int = 12) -> list[tuple[str, float]]:
        return [(f, 100.0 * c / self.samples) for f, c in self.self_frames.most_common(n)]

    def top_inclusive(self, n: int = 12) -> list[tuple[str, float]]:
        return [(f, 100.0 * c / self.samples) for f, c in self.inclusive_frames.most_common(n)]

    def top_files(self, n: int = 10) -> list[tuple[str, float]]:
        """Self time summed by source file (``engine/workers/protocol.py``, ``asyncio/...``)."""
        by_file: Counter = Counter()
        for frame, count in self.self_frames.items():
            by_file[_frame_file(frame)] += count
        return [(f, 100.0 * c / self.samples) for f, c in by_file.most_common(n)]

    def process_shares(self) -> list[tuple[str, float]]:
        return [(p, 100.0 * c / self.samples) for p, c in self.by_process.most_common()]


def _frame_file(frame: str) -> str:
    """``"send (engine/workers/connection.py:61)"`` -> ``"engine/workers/connection.py"``."""
    m = re.search(r"\(([^()]*?)(?::\d+)?\)$", frame)
    return m.group(1) if m else frame


def _short_process(frame: str) -> str:
    """``process 123:"python -m dagserve.engine.workers.main --settings {...}"`` -> shorter text."""
    text = frame.split(":", 1)[1].strip().strip('"') if ":" in frame else frame
    for marker, name in (("dagserve.engine.workers.main", "worker"), ("dagserve.engine.cli", "frontend"),
                         ("model_service_worker", "TorchServe worker")):
        if marker in text:
            model = re.search(r'"model_name": "([^"]+)"', text)
            return f"{name} ({model.group(1)})" if model else name
    return text[:60]


def parse_collapsed(text: str) -> Profile:
    """Sum py-spy's raw (collapsed) output."""
    profile = Profile()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        process = "(this process)"
        while frames and _PROCESS_FRAME.match(frames[0]):  # parent, child, ...: keep the last
            process = _short_process(frames[0])
            frames = frames[1:]
        if not frames:
            continue
        profile.samples += count
        profile.by_process[process] += count
        profile.self_frames[frames[-1]] += count
        for frame in set(frames):
            profile.inclusive_frames[frame] += count
    return profile


@dataclass
class Recording:
    """A running ``py-spy record``; ``finish()`` waits for it and parses what it wrote."""

    proc: subprocess.Popen
    output: Path

    def finish(self, timeout_s: float = 60.0) -> Profile:
        try:
            _, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.output.is_file():
            raise ProfileError(f"py-spy wrote no profile (exit {self.proc.returncode}): "
                               f"{(err or b'').decode(errors='replace').strip()[-500:]}")
        profile = parse_collapsed(self.output.read_text(encoding="utf-8", errors="replace"))
        if profile.samples == 0:
            raise ProfileError("py-spy recorded no samples (was the server idle?)")
        return profile


def start_record(pid: int, seconds: float, output: Path, *, rate: int = 100) -> Recording:
    """Start sampling ``pid`` and its subprocesses for ``seconds`` (non-blocking sampling:
    the server is not paused, so the load is barely disturbed)."""
    py_spy = find_py_spy()
    if py_spy is None:
        raise ProfileError("py-spy is not installed (pip install py-spy)")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
           "--rate", str(rate), "--format", "raw", "--output", str(output), "--subprocesses",
           "--nonblocking"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return Recording(proc, output)
