"""Start, drive and stop a model server (dagserve or TorchServe) as a subprocess.

Both get the same config.properties (TorchServe's keys) on free loopback ports, the same
store, ``--disable-token-auth --ncs``, and one echo model preloaded so that the time from
process start to the first successful inference can be measured. Models and workflows are
then registered through the management API with the query keys both servers accept, so
the same driver code runs against either.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .procstats import TreeSample, sample_tree

__all__ = ["HttpReply", "Ports", "ServerError", "ServerProcess", "dagserve_command",
           "free_ports", "http_call", "torchserve_command", "write_config"]

REPO = Path(__file__).resolve().parent.parent
STARTED_LINE = "Model server started."


class ServerError(RuntimeError):
    """The server did not start, or a management call failed (the message says which)."""


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int


def free_ports(count: int = 3) -> list[int]:
    """Distinct free loopback ports (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_config(path: Path, ports: Ports, store: Path, *, workers_per_model: int = 1) -> Path:
    """A config.properties both servers read the same way."""
    lines = [
        f"inference_address=http://127.0.0.1:{ports.inference}",
        f"management_address=http://127.0.0.1:{ports.management}",
        f"metrics_address=http://127.0.0.1:{ports.metrics}",
        f"model_store={store}",
        f"workflow_store={store}",
        f"default_workers_per_model={workers_per_model}",
        "enable_model_api=true",
        "disable_token_authorization=true",
        "install_py_dep_per_model=false",
        "default_response_timeout=120",
    ]
    # both servers open gRPC ports too (7070/7071 by default): free ones, so that two
    # servers at once never collide
    lines += [f"grpc_{api}_port={port}"
              for api, port in zip(("inference", "management"), free_ports(2))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _common_flags(config: Path, store: Path, preload: str) -> list[str]:
    return ["--ts-config", str(config), "--model-store", str(store), "--workflow-store",
            str(store), "--models", preload, "--disable-token-auth", "--ncs"]


def dagserve_command(config: Path, store: Path, preload: str,
                     python: str = sys.executable) -> list[str]:
    return [python, "-m", "dagserve.engine.cli", "--foreground",
            *_common_flags(config, store, preload)]


def torchserve_command(venv: Path, config: Path, store: Path, preload: str) -> list[str]:
    return [str(venv / "bin" / "torchserve"), "--start", "--foreground",
            *_common_flags(config, store, preload)]


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def message(self) -> str:
        """The JSON ``message`` (TorchServe's and dagserve's reply shape), else the text."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return self.text.strip()
        if isinstance(data, dict):
            return str(data.get("message") or data.get("status") or data)
        return self.text.strip()


def http_call(method: str, url: str, body: bytes | None = None, *, timeout: float = 120.0,
              content_type: str = "application/octet-stream") -> HttpReply:
    """One request with the standard library (setup only; never on a measured path).
    Any HTTP status is returned; a connection failure raises OSError."""
    headers = {"Content-Type": content_type} if body is not None else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpReply(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, exc.read())


@dataclass
class ServerProcess:
    """One running server: its process group, ports and log."""

    name: str
    argv: list[str]
    cwd: Path
    ports: Ports
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    log_path: Path | None = None

    @property
    def inference(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError(f"{self.name} is not started")
        return self.proc.pid

    def start(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log_path = self.cwd / "server_stdout.log"
        log = self.log_path.open("wb")
        self.started_at = time.perf_counter()
        try:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError as exc:
            raise ServerError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from None
        finally:
            log.close()

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"{self.name} exited with status {self.proc.returncode}; "
                              f"last lines of {self.log_path}:\n{self.log_tail()}")

    def wait_first_inference(self, path: str, body: bytes, *, since: float | None = None,
                             content_type: str = "application/octet-stream",
                             timeout_s: float = 180.0) -> float:
        """Poll ``POST path`` until it answers 200; seconds since ``since`` (a perf_counter
        value; default: when the process started)."""
        since = self.started_at if since is None else since
        deadline = time.perf_counter() + timeout_s
        last = "no answer yet"
        while time.perf_counter() < deadline:
            self.check_alive()
            try:
                reply = http_call("POST", self.inference + path, body, timeout=30,
                                  content_type=content_type)
                if reply.status == 200:
                    return time.perf_counter() - since
                last = f"HTTP {reply.status}: {reply.message()[:200]}"
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.02)
        raise ServerError(f"{self.name}: no successful POST {path} within {timeout_s:.0f} s "
                          f"(last: {last}); log tail:\n{self.log_tail()}")

    def sample(self) -> TreeSample:
        return sample_tree(self.pid)

    # ---- management API (TorchServe-compatible) ------------------------------------------

    def _manage(self, method: str, path: str, what: str, ok: tuple[int, ...] = (200,),
                timeout: float = 300.0) -> HttpReply:
        self.check_alive()
        try:
            reply = http_call(method, self.management + path, timeout=timeout)
        except OSError as exc:
            raise ServerError(f"{self.name}: {what}: {method} {path} failed: {exc}") from None
        if reply.status not in ok:
            raise ServerError(f"{self.name}: {what}: {method} {path} -> HTTP {reply.status}: "
                              f"{reply.message()[:500]}")
        return reply

    def register_model(self, name: str, url: str, *, batch_size: int, max_batch_delay_ms: int,
                       workers: int) -> None:
        query = urllib.parse.urlencode({
            "url": url, "model_name": name, "batch_size": batch_size,
            "max_batch_delay": max_batch_delay_ms, "initial_workers": workers,
            "synchronous": "true"})
        self._manage("POST", f"/models?{query}", f"registering model {name}")

    def unregister_model(self, name: str) -> None:
        self._manage("DELETE", f"/models/{urllib.parse.quote(name)}",
                     f"unregistering model {name}")

    def register_workflow(self, url: str, name: str) -> HttpReply:
        """Register a .war; returns the reply whatever its status (the caller decides)."""
        query = urllib.parse.urlencode({"url": url, "workflow_name": name})
        return self._manage("POST", f"/workflows?{query}", f"registering workflow {name}",
                            ok=tuple(range(100, 600)))

    def unregister_workflow(self, name: str) -> None:
        self._manage("DELETE", f"/workflows/{urllib.parse.quote(name)}",
                     f"unregistering workflow {name}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group is the server's own
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
