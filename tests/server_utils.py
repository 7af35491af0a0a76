"""Helpers for tests that need the real server: start ``dagserve`` as a subprocess on free
loopback ports, stop it, and build tiny model archives with the real model archiver.

Typical use in a test module::

    from server_utils import ECHO_HANDLER, build_mar, start_server

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        work = tmp_path_factory.mktemp("server")
        store = work / "model_store"
        build_mar(store, "echo", ECHO_HANDLER)
        with start_server(work, model_store=store,
                          args=["--disable-token-auth", "--enable-model-api"]) as srv:
            yield srv

    def test_predict(server):
        requests.post(server.management_url + "/models",
                      params={"url": "echo.mar", "initial_workers": 1})
        requests.post(server.inference_url + "/predictions/echo", data=b"hi")

The server runs ``python -m dagserve.engine.cli --foreground`` in ``workdir`` (so ``logs/``,
``key_file.json`` and the snapshots land there) with a generated ``config.properties`` that
puts the three APIs on free 127.0.0.1 ports. Its stdout and stderr go to
``workdir/server-<n>.out``; :func:`start_server` waits (bounded) for
``Model server started.``. ``TMPDIR`` is ``workdir/tmp``, so the server's scratch files
(unpacked models, worker sockets, pid file) stay inside the test's directory.
Starting a server costs a few seconds: share one per module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTED_LINE = "Model server started."
API_NAMES = ("inference", "management", "metrics")
GRPC_NAMES = ("grpc_inference", "grpc_management")  # ports as config keys <name>_port

# -- handlers for tiny test models ---------------------------------------------------------

ECHO_HANDLER = '''\
"""Echo: each request's ``data`` field or raw body comes back unchanged."""


def handle(data, context):
    if data is None:  # the load-time call
        return None
    out = []
    for row in data:
        value = row.get("data", row.get("body"))
        out.append(bytes(value) if isinstance(value, bytearray) else value)
    return out
'''

FAILING_INIT_HANDLER = '''\
"""A handler whose initialize raises: its workers can never start."""


class Broken:
    def initialize(self, context):
        raise RuntimeError("this model refuses to load")

    def handle(self, data, context):
        return data
'''

METRICS_HANDLER = '''\
"""Echo that also records a custom counter and a gauge through context.metrics."""


def handle(data, context):
    if data is None:
        return None
    context.metrics.add_counter("EchoRequests", len(data))
    context.metrics.add_metric("EchoBatchSize", len(data), "count", metric_type="gauge")
    return [row.get("data", row.get("body")) for row in data]
'''


def build_mar(store: Path, name: str, handler_source: str, *, version: str = "1.0",
              handler_file: str = "handler.py",
              extra_files: Mapping[str, str | bytes] | None = None,
              config_yaml: str | None = None, archive_format: str = "default",
              export_name: str | None = None) -> Path:
    """Build ``<store>/<name>.mar`` (or ``export_name``) with ``python -m dagserve.archiver.model_cli``
    from a handler given as source text. ``extra_files`` maps file names to contents;
    ``config_yaml`` becomes the archive's model-config.yaml. Returns the archive's path."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    src = Path(tempfile.mkdtemp(prefix=f"mar-src-{name}-"))
    out_dir = Path(tempfile.mkdtemp(prefix=f"mar-out-{name}-"))
    try:
        handler_path = src / handler_file
        handler_path.write_text(handler_source)
        cmd = [sys.executable, "-m", "dagserve.archiver.model_cli", "--model-name", name,
               "-v", version, "--handler", str(handler_path), "--export-path", str(out_dir),
               "--archive-format", archive_format, "-f"]
        if extra_files:
            extra_dir = src / "extra"
            extra_dir.mkdir()
            for fname, content in extra_files.items():
                target = extra_dir / fname
                if isinstance(content, bytes):
                    target.write_bytes(content)
                else:
                    target.write_text(content)
            cmd += ["--extra-files", ",".join(str(extra_dir / f) for f in extra_files)]
        if config_yaml is not None:
            cfg_path = src / "model-config.yaml"
            cfg_path.write_text(config_yaml)
            cmd += ["--config-file", str(cfg_path)]
        proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=120,
                              env=_child_env(None))
        if proc.returncode != 0:
            raise RuntimeError(f"model archiver failed for {name}: {proc.stderr.strip()}")
        built = [p for p in out_dir.iterdir()]
        if len(built) != 1:
            raise RuntimeError(f"model archiver wrote {built}, expected one archive")
        target = store / (export_name or built[0].name)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        shutil.move(str(built[0]), target)
        return target
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)


def build_war(store: Path, name: str, spec_yaml: str, handler_source: str = "",
              *, handler_file: str = "workflow_handler.py") -> Path:
    """Build ``<store>/<name>.war`` with ``python -m dagserve.archiver.workflow_cli`` from a spec and a
    handler file (its functions are the DAG's function nodes) given as text."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    src = Path(tempfile.mkdtemp(prefix=f"war-src-{name}-"))
    try:
        (src / "spec.yaml").write_text(spec_yaml)
        (src / handler_file).write_text(handler_source)
        cmd = [sys.executable, "-m", "dagserve.archiver.workflow_cli", "--workflow-name", name,
               "--spec-file", str(src / "spec.yaml"), "--handler", str(src / handler_file),
               "--export-path", str(store), "-f"]
        proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=120,
                              env=_child_env(None))
        if proc.returncode != 0:
            raise RuntimeError(f"workflow archiver failed for {name}: {proc.stderr.strip()}")
        return store / f"{name}.war"
    finally:
        shutil.rmtree(src, ignore_errors=True)


# -- ports and config ----------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_ts_config(path: Path, ports: Mapping[str, int],
                    extra: Mapping[str, object] | None = None) -> Path:
    """A config.properties with the three addresses on 127.0.0.1 and ``extra`` keys
    (booleans written as true/false, dicts as JSON)."""
    lines = [f"{api}_address=http://127.0.0.1:{ports[api]}" for api in API_NAMES]
    lines += [f"{api}_port={ports[api]}" for api in GRPC_NAMES if api in ports]
    for key, value in (extra or {}).items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
        lines.append(f"{key}={value}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


# -- processes -----------------------------------------------------------------------------

def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The environment for a child: ours without TS_* variables (they would change the
    server's config), the repository on PYTHONPATH, unbuffered output."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
    base["PYTHONUNBUFFERED"] = "1"
    path = base.get("PYTHONPATH")
    base["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    if env:
        base.update(env)
    return base


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


@dataclass
class RunningServer:
    """A server started by :func:`start_server`. Use as a context manager, or call
    :meth:`stop`."""

    proc: subprocess.Popen
    workdir: Path
    ports: dict[str, int]
    config_path: Path
    output_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}"

    @property
    def grpc_inference_target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc_inference']}"

    @property
    def grpc_management_target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc_management']}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """What the server printed so far (stdout and stderr)."""
        try:
            return self.output_path.read_text(errors="replace")
        except OSError:
            return ""

    def keys(self) -> dict:
        """The parsed ``key_file.json`` (token auth on)."""
        return json.loads((self.workdir / "key_file.json").read_text())

    def auth(self, kind: str = "management") -> dict[str, str]:
        """``Authorization`` header for ``kind`` ("management", "inference" or "API");
        empty when the server runs without a key file."""
        path = self.workdir / "key_file.json"
        if not path.exists():
            return {}
        return {"Authorization": f"Bearer {self.keys()[kind]['key']}"}

    def unpacked_models(self) -> list[Path]:
        """The model directories the server has unpacked (in its scratch dir under
        ``workdir/tmp``)."""
        return sorted(p for d in (self.workdir / "tmp").glob("dagserve-*/models")
                      for p in d.iterdir())

    def worker_pids(self) -> list[int]:
        """The live processes the server started (its workers)."""
        return [p for p in descendants(self.proc.pid) if pid_alive(p)]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL (with the workers). Returns the
        exit status."""
        if self.proc.poll() is None:
            workers = descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_all(workers)
            else:
                # A clean stop leaves no worker behind; make sure of it for the next test.
                if not wait_until(lambda: not any(pid_alive(p) for p in workers), 5.0):
                    self._kill_all(workers)
        return self.proc.wait()

    def kill(self) -> int:
        """SIGKILL the server at once, as a crash would (its orphaned workers are reaped
        here too so that they cannot disturb later tests). Returns the exit status."""
        workers = descendants(self.proc.pid) if self.proc.poll() is None else []
        self._kill_all(workers)
        return self.proc.wait()

    def _kill_all(self, workers: Iterable[int]) -> None:
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait()
        workers = list(workers)
        if not wait_until(lambda: not any(pid_alive(p) for p in workers), 5.0):
            for pid in workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_server_count = 0


def start_server(workdir: Path, *, model_store: Path | None = None, args: Sequence[str] = (),
                 config: Mapping[str, object] | None = None,
                 env: Mapping[str, str] | None = None, ports: Mapping[str, int] | None = None,
                 timeout: float = 60.0) -> RunningServer:
    """Start ``dagserve --foreground`` in ``workdir`` and wait for ``Model server started.``.

    ``args`` are extra CLI flags (``--disable-token-auth``, ``--enable-model-api``,
    ``--ncs``, ``--models ...``); ``config`` extra config.properties keys; ``ports`` reuses
    given ports (else free ones are picked, and picked again if they were taken in between).
    Raises RuntimeError with the server's output when it exits or does not start in time.
    """
    global _server_count
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    attempts = 1 if ports is not None else 3
    last_error = ""
    for _ in range(attempts):
        chosen = dict(ports) if ports is not None else \
            {api: free_port() for api in API_NAMES + GRPC_NAMES}
        _server_count += 1
        config_path = write_ts_config(workdir / f"config-{_server_count}.properties", chosen,
                                      config)
        output_path = workdir / f"server-{_server_count}.out"
        cmd = [sys.executable, "-m", "dagserve.engine.cli", "--foreground", "--ts-config",
               str(config_path)]
        if model_store is not None:
            cmd += ["--model-store", str(model_store)]
        cmd += list(args)
        tmp = workdir / "tmp"  # the server's scratch dir (unpacked models, sockets, pid file)
        tmp.mkdir(exist_ok=True)
        child_env = _child_env({"TMPDIR": str(tmp), **(env or {})})
        with output_path.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=child_env)
        server = RunningServer(proc, workdir, chosen, config_path, output_path, list(args))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if STARTED_LINE in server.output():
                return server
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        else:
            server.kill()
            raise RuntimeError(f"server did not start within {timeout:g} s:\n"
                               f"{server.output()[-4000:]}")
        last_error = server.output()[-4000:]
        if "in use" not in last_error:
            break
    raise RuntimeError(f"server exited before it started:\n{last_error}")


# -- workflows -----------------------------------------------------------------------------

@contextlib.contextmanager
def serving_workflows(work: Path, model_store: Path, wf_store: Path,
                      names: Iterable[str]) -> Iterator[RunningServer]:
    """A server (token auth off, model API on) with ``<name>.war`` of ``wf_store`` registered
    for each of ``names``."""
    with start_server(work, model_store=model_store,
                      args=["--disable-token-auth", "--enable-model-api", "--ncs",
                            "--workflow-store", str(wf_store)]) as srv:
        for name in names:
            r = requests.post(srv.management_url + "/workflows",
                              params={"url": f"{name}.war"}, timeout=120)
            assert r.status_code == 200, r.text
        yield srv


def worker_pids(server: RunningServer, model: str) -> set[int]:
    """The process ids of a model's workers, as its description lists them."""
    desc = requests.get(f"{server.management_url}/models/{model}", timeout=10).json()
    return {w["pid"] for w in desc[0]["workers"]}


def traced_wfpredict(server: RunningServer, workflow: str,
                     body: bytes) -> tuple[requests.Response, dict[str, dict]]:
    """``POST /wfpredict/<workflow>?trace=true``: the response and its trace's nodes by
    name."""
    r = requests.post(f"{server.inference_url}/wfpredict/{workflow}?trace=true", data=body,
                      timeout=30)
    trace = requests.get(f"{server.management_url}/workflows/{workflow}/traces/"
                         f"{r.headers['X-Dagserve-Trace-Id']}", timeout=10).json()
    return r, {n["node"]: n for n in trace["nodes"]}
