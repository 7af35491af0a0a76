"""A real multi-node Ray cluster on this machine, for the Ray tests and benchmarks.

Each node is one ``ray start --block`` process that this helper starts and owns: the head
(``--head``, GCS on a free port outside Ray's worker port range) and nodes joining it
(``--address``). Every node has a custom resource and a label of its own
(``--resources '{"<name>": 10}' --labels dagserve-node=<name>``) so that a model can be
placed on it. Stopping a node is SIGTERM to its ``ray start`` process (which stops the
node's processes), then SIGKILL to whatever of its process tree is left, by pid: other
Ray clusters on the machine are never touched (``ray stop`` would stop them all).

Node addresses are loopback addresses other than 127.0.0.1 (127.0.0.2, 127.0.0.3, ...):
Ray on Linux replaces 127.0.0.1 by the machine's outward address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which also refuses a second node. So all cluster
traffic goes over loopback, though Ray binds its servers for any other node address on
every interface (see docs/ray.md).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from server_utils import descendants, pid_alive, wait_until

RAY_BIN = Path(sys.executable).parent / "ray"
MIN_WORKER_PORT, MAX_WORKER_PORT = 10002, 19999  # Ray's defaults, given explicitly
START_TIMEOUT_S = 120.0


def _free_port() -> int:
    """A free port outside Ray's worker port range."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not MIN_WORKER_PORT <= port <= MAX_WORKER_PORT:
            return port


def ray_available() -> str | None:
    """None when this venv can run a Ray cluster, else why not."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install 'dagserve[ray]'; make test installs it)"
    if not RAY_BIN.exists():
        return f"the ray command is missing next to {sys.executable}"
    return None


@dataclass
class RayNode:
    name: str
    ip: str
    proc: subprocess.Popen
    log: Path

    def processes(self) -> list[int]:
        """The node's live processes: its ``ray start`` and everything below it."""
        if self.proc.poll() is not None:
            return [p for p in descendants(self.proc.pid) if pid_alive(p)]
        return [self.proc.pid] + [p for p in descendants(self.proc.pid) if pid_alive(p)]

    def worker_pids(self, actor_class: str = "") -> list[int]:
        """The node's Ray worker processes (actors, idle workers), not its agents; with
        ``actor_class``, only the actors of that class."""
        found = []
        for pid in self.processes():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if cmd.startswith(f"ray::{actor_class}") and not cmd.endswith("Agent"):
                found.append(pid)
        return found


@dataclass
class LocalRayCluster:
    """Start with :meth:`start_head`, add nodes with :meth:`add_node`, :meth:`stop` at the
    end (also as a context manager)."""

    workdir: Path
    nodes: dict[str, RayNode] = field(default_factory=dict)
    gcs_port: int = 0
    client_port: int = 0  # the head's Ray Client server: ray://<head ip>:<client_port>
    num_cpus: int = 2
    object_store_bytes: int = 256 << 20
    seen: set[int] = field(default_factory=set)  # every process of the cluster stop() found

    @property
    def address(self) -> str:
        """The GCS address a frontend gives as ``ray_address``."""
        return f"{self.nodes['a'].ip}:{self.gcs_port}" if self.nodes else ""

    @property
    def home(self) -> Path:
        """The HOME of the cluster's processes, and of the frontends that join it: a stray
        ``~/.ray/auth_token`` (another Ray on this machine made one) turns token checks on
        for some processes and not others, and the second node cannot join."""
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        return home

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TS_"))}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["HOME"] = str(self.home)
        tmp = self.workdir / "tmp"  # where the actors unpack their models
        tmp.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmp)
        return env

    def _start(self, name: str, args: list[str]) -> RayNode:
        ip = f"127.0.0.{len(self.nodes) + 2}"
        log = self.workdir / f"ray-node-{name}.log"
        cmd = [str(RAY_BIN), "start", "--block", f"--node-ip-address={ip}",
               f"--min-worker-port={MIN_WORKER_PORT}", f"--max-worker-port={MAX_WORKER_PORT}",
               f"--num-cpus={self.num_cpus}", f"--object-store-memory={self.object_store_bytes}",
               f"--resources={json.dumps({name: 10})}", f"--labels=dagserve-node={name}",
               f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats", *args]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self._env(),
                                    start_new_session=True)
        node = RayNode(name, ip, proc, log)
        self.nodes[name] = node
        if not wait_until(lambda: b"Ray runtime started" in log.read_bytes()
                          or proc.poll() is not None, START_TIMEOUT_S, 0.2) \
                or proc.poll() is not None:
            raise RuntimeError(f"ray node {name} did not start:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        return node

    def start_head(self) -> RayNode:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gcs_port = _free_port()
        self.client_port = _free_port()
        temp = self.workdir / "ray"  # Ray's session files, not /tmp/ray
        return self._start("a", ["--head", f"--port={self.gcs_port}",
                                 "--include-dashboard=false",
                                 f"--dashboard-port={_free_port()}",
                                 f"--ray-client-server-port={self.client_port}",
                                 f"--temp-dir={temp}"])

    def add_node(self, name: str) -> RayNode:
        return self._start(name, [f"--address={self.address}"])

    def wait_nodes(self, timeout: float = 60.0) -> None:
        """Until the GCS lists every node alive (a joined node registers a moment later)."""
        script = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
                  "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run([sys.executable, "-c", script, self.address],
                                 capture_output=True, text=True, timeout=timeout,
                                 env=self._env())
            if out.stdout.strip() == str(len(self.nodes)):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray nodes not all alive: {out.stdout}{out.stderr[-2000:]}")
            time.sleep(1)

    def stop(self, timeout: float = 30.0) -> None:
        for node in reversed(list(self.nodes.values())):
            tree = node.processes()
            self.seen.update(tree)
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
                try:
                    node.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            if not wait_until(lambda: not any(pid_alive(p) for p in tree), 10.0, 0.1):
                for pid in tree:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if node.proc.poll() is None:
                node.proc.kill()
            node.proc.wait()

    def leftovers(self) -> list[int]:
        """Processes of the cluster still alive (after :meth:`stop`: none)."""
        return sorted(p for p in self.seen | {p for n in self.nodes.values()
                                               for p in n.processes()} if pid_alive(p))

    def __enter__(self) -> "LocalRayCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
