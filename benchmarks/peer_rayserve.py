"""Ray Serve as a peer, in its own virtualenv ``benchmarks/.venv-rayserve``.

``ray[serve]`` is pinned to the ``ray`` of the project's venv when it has one (2.60.0 when
the ``ray`` extra is installed), so both sides of the comparison run the same Ray.
``benchmarks/rayserve_app.py`` runs in that venv: it starts a one-node cluster, Serve's HTTP
proxy on a loopback port, and deploys or deletes applications on command (stdin), so that
one server process serves the echo model, then the chains, like the other servers do.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .peer import PeerError, _probe_error, _run, _venv_python
from .procstats import process_tree
from .servers import Ports, ServerError, ServerProcess

__all__ = ["DEFAULT_RAYSERVE_VENV", "RayServeInstall", "RayServeServer", "ensure_rayserve",
           "rayserve_command"]

HERE = Path(__file__).resolve().parent
DEFAULT_RAYSERVE_VENV = HERE / ".venv-rayserve"
APP_SCRIPT = HERE / "rayserve_app.py"
DEFAULT_RAY_VERSION = "2.60.0"
_PROBE = "import ray, ray.serve; print(ray.__version__)"


@dataclass(frozen=True)
class RayServeInstall:
    venv: Path
    version: str


def wanted_ray_version() -> str:
    """The project venv's ray when installed (same Ray on both sides), else 2.60.0."""
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return DEFAULT_RAY_VERSION


def ensure_rayserve(venv: Path = DEFAULT_RAYSERVE_VENV, log=print) -> RayServeInstall:
    """Install (once) ``ray[serve]==<wanted>`` into ``venv``."""
    wanted = wanted_ray_version()
    found, _error = _probe_error(venv, _PROBE)
    if found != wanted:
        log(f"installing ray[serve]=={wanted} into {venv} (once; ~1 minute)")
        if not _venv_python(venv).is_file():
            base = shutil.which("python3") or sys.executable
            _run([base, "-m", "venv", str(venv)], "creating the Ray Serve venv", log)
        _run([str(_venv_python(venv)), "-m", "pip", "--disable-pip-version-check", "install",
              "-q", f"ray[serve]=={wanted}"], f"installing ray[serve]=={wanted}", log)
        found, error = _probe_error(venv, _PROBE)
        if found is None:
            raise PeerError(f"ray[serve] installed into {venv} but does not import: {error}")
    return RayServeInstall(venv, found)


def rayserve_command(install: RayServeInstall, port: int,
                     deploy: tuple[str, ...] = ("echo",)) -> list[str]:
    return [str(_venv_python(install.venv)), str(APP_SCRIPT), "--port", str(port),
            *(x for app in deploy for x in ("--deploy", app))]


class RayServeServer(ServerProcess):
    """``rayserve_app.py`` as a server process, driven through its stdin."""

    def __init__(self, install: RayServeInstall, cwd: Path, port: int):
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        env.pop("PYTHONPATH", None)
        env.pop("RAY_ADDRESS", None)  # never join a cluster someone else started
        # Ray keeps state under ~/.ray (an auth token, once made, turns token checks on for
        # every later Ray on the machine, the test suite's cluster included): its own HOME
        env["HOME"] = str(cwd / "home")
        (cwd / "home").mkdir(parents=True, exist_ok=True)
        super().__init__("Ray Serve", rayserve_command(install, port), cwd,
                         Ports(port, port, port), env=env)

    def start(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log_path = self.cwd / "server_stderr.log"
        self.started_at = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, start_new_session=True)
        self._expect("ready")

    def command(self, line: str) -> None:
        """Send ``deploy <app>`` / ``delete <app>``; raises ServerError unless answered ok."""
        self.check_alive()
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        self._expect("ok")

    def _expect(self, word: str, timeout_s: float = 180.0) -> None:
        """Read the app's answer (one line per command) within ``timeout_s``."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            raise ServerError(f"Ray Serve: no {word!r} within {timeout_s:.0f} s; log tail:\n"
                              f"{self.log_tail()}")
        answer = self.proc.stdout.readline().strip()
        if not answer.startswith(word):
            self.check_alive()
            raise ServerError(f"Ray Serve: expected {word!r}, got {answer!r}; log tail:\n"
                              f"{self.log_tail()}")

    def stop(self, timeout_s: float = 60.0) -> None:
        """``quit`` (Serve and Ray shut down in order), then the process group goes, and
        any process of the tree that left the group (seen before the quit) is killed."""
        tree = [(pid, _start_time(pid)) for pid in
                (process_tree(self.proc.pid)[1:] if self.proc is not None else [])]
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout_s)
            except (OSError, subprocess.TimeoutExpired):
                pass
        super().stop(timeout_s=5.0)
        for pid, started in tree:
            if started is None or _start_time(pid) != started:
                continue  # gone (a new process may have its pid now)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the pid, its identity."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()[19]
