"""``dagserve``: start and stop the server with TorchServe's flags.

- ``--foreground`` (with or without ``--start``) runs the server in this process until
  SIGTERM/SIGINT.
- ``--start`` (or no action at all, as in TorchServe) runs the same command with
  ``--foreground`` as a detached child whose output goes to ``logs/ts_stdout.log``, waits
  until it prints ``Model server started.`` (or dies), then says so and returns.
- ``--stop`` stops the server started from the same working directory.

The server's pid is kept in ``<tmp>/dagserve-<sha1 of the working dir>.pid`` together with the
process's start time, so a pid that was reused by another process is never signalled.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from dagserve import __version__

from .config import Config, load_config, split_address
from .errors import ConfigError, DagserveError
from .pidfile import (  # noqa: F401 - the pid file functions are part of the CLI's API
    AlreadyRunning, PidRecord, is_alive, pid_file_path, proc_stat, process_start_time,
    read_pid_file, remove_pid_file, running_server, write_pid_file)
from .system_metrics import read_metrics_config
from .tls import server_ssl_context

STARTED_LINE = "Model server started."
STDOUT_LOG = "ts_stdout.log"
STOP_TIMEOUT_S = 30.0
_POLL_S = 0.1
_URL = ("http://", "https://")


# ---- arguments ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dagserve", description="Serve PyTorch models (.mar) and DAG workflows (.war).")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--start", action="store_true", help="start the model server")
    action.add_argument("--stop", action="store_true", help="stop the model server")
    action.add_argument("-v", "--version", action="store_true", help="print the version")
    parser.add_argument("--ts-config", dest="ts_config", metavar="FILE",
                        help="config.properties file")
    parser.add_argument("--model-store", dest="model_store", metavar="DIR",
                        help="directory of the model archives (.mar)")
    parser.add_argument("--workflow-store", dest="workflow_store", metavar="DIR",
                        help="directory of the workflow archives (.war); default: the model store")
    parser.add_argument("--models", nargs="+", metavar="[NAME=]MODEL",
                        help="models to load at start: [name=]x.mar (in the model store), "
                             "an http(s) URL, or 'all'")
    parser.add_argument("--workflows", nargs="+", metavar="WORKFLOW",
                        help="workflows to load at start: x.war (in the workflow store), or 'all'")
    parser.add_argument("--foreground", action="store_true",
                        help="run the server in this process instead of in the background")
    parser.add_argument("--no-config-snapshots", "--ncs", dest="ncs", action="store_true",
                        help="neither restore nor write config snapshots")
    parser.add_argument("--log-config", dest="log_config", metavar="FILE",
                        help="Python logging configuration (.json, .yaml or .ini)")
    parser.add_argument("--cpp-log-config", dest="cpp_log_config", metavar="FILE",
                        help=argparse.SUPPRESS)  # TorchServe's C++ backend; accepted, unused
    parser.add_argument("--plugins-path", "--ppath", dest="plugins_path", metavar="DIR",
                        help="plugins directory")
    parser.add_argument("--disable-token-auth", "--disable-token", "--dt",
                        dest="disable_token_auth", action="store_true",
                        help="serve without token authorization")
    parser.add_argument("--enable-model-api", "--model-api-enabled", dest="enable_model_api",
                        action="store_true",
                        help="allow registering and deleting models and workflows over HTTP")
    parser.add_argument("--ray-address", dest="ray_address", metavar="ADDRESS",
                        help="run workers as actors on this Ray cluster: 'auto', a GCS "
                             "host:port, or ray://host:port (needs dagserve[ray])")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The Config the flags ask for (config file, then environment, then flags)."""
    return load_config(
        config_file=Path(args.ts_config) if args.ts_config else None,
        model_store=args.model_store,
        workflow_store=args.workflow_store,
        load_models=tuple(args.models) if args.models else None,
        load_workflows=tuple(args.workflows) if args.workflows else None,
        snapshots=False if args.ncs else None,
        disable_token_authorization=True if args.disable_token_auth else None,
        enable_model_api=True if args.enable_model_api else None,
        log_config=args.log_config,
        plugins_path=args.plugins_path,
        foreground=bool(args.foreground),
        ray_address=args.ray_address,
    )


def validate(cfg: Config) -> None:
    """What must hold before a server is started; raises ConfigError with one clear line."""
    for name in ("inference_address", "management_address", "metrics_address"):
        split_address(getattr(cfg, name))
    for label, directory in (("model store", cfg.model_store),
                             ("workflow store", cfg.workflow_store),
                             ("plugins path", cfg.plugins_path)):
        if directory is not None and not Path(directory).is_dir():
            raise ConfigError(f"{label} directory not found: {directory}")
    if cfg.log_config is not None and not Path(cfg.log_config).is_file():
        raise ConfigError(f"--log-config file not found: {cfg.log_config}")
    if cfg.model_store is None:
        local = [m for m in cfg.load_models
                 if m.lower() != "all" and not m.split("=", 1)[-1].lower().startswith(_URL)]
        if local:
            raise ConfigError(f"--model-store is required to load model locally: "
                              f"{', '.join(local)}")
    if cfg.workflow_store is None and cfg.load_workflows:
        raise ConfigError("--workflow-store (or --model-store) is required to load workflows")
    server_ssl_context(cfg)  # an https address must be servable over TLS
    if cfg.metrics_config is not None:
        read_metrics_config(cfg.metrics_config)


# ---- actions --------------------------------------------------------------------------------

def _err(message: str) -> None:
    print(f"dagserve: {message}", file=sys.stderr, flush=True)


def run_foreground(cfg: Config) -> int:
    pid_path = pid_file_path(cfg.workdir)
    try:
        write_pid_file(pid_path)
    except AlreadyRunning as exc:
        _err(f"Model server is already running (pid {exc.record.pid}), please use "
             f"dagserve --stop to stop it.")
        return 1

    def _terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    # Until the server installs its own handlers: a SIGTERM still removes the pid file.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        from . import server

        return server.run(cfg)
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        remove_pid_file(pid_path)


def server_command(argv: Sequence[str]) -> list[str]:
    """The detached child's command line: this command, in the foreground."""
    return [sys.executable, "-m", "dagserve.engine.cli", *(a for a in argv if a != "--start"),
            "--foreground"]


def start_background(cfg: Config, argv: Sequence[str],
                     command: Sequence[str] | None = None) -> int:
    """Run ``command`` (default: ``dagserve <argv> --foreground``) detached, its output
    appended to ``logs/ts_stdout.log``; wait until it prints ``Model server started.``."""
    pid_path = pid_file_path(cfg.workdir)
    running = running_server(pid_path)
    if running is not None:
        _err(f"Model server is already running (pid {running.pid}), please use "
             f"dagserve --stop to stop it.")
        return 1
    log_dir = Path(cfg.log_dir)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / STDOUT_LOG, "ab")
    except OSError as exc:
        _err(f"cannot write {log_dir / STDOUT_LOG}: {exc.strerror}")
        return 1
    log_path = log_dir / STDOUT_LOG
    offset = out.tell()
    # The child must import this very package, wherever it was imported from here.
    root = str(Path(__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath)
    with out:
        child = subprocess.Popen(list(command or server_command(argv)),
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 cwd=cfg.workdir, env=env, start_new_session=True)
    timeout = max(float(cfg.default_startup_timeout), 1.0)
    deadline = time.monotonic() + timeout
    seen = b""
    while True:
        seen += _read_from(log_path, offset + len(seen))
        if STARTED_LINE.encode() in seen:
            print(STARTED_LINE, flush=True)
            return 0
        code = child.poll()
        if code is not None:
            seen += _read_from(log_path, offset + len(seen))
            if STARTED_LINE.encode() in seen:  # printed it, then stopped at once
                print(STARTED_LINE, flush=True)
                return 0
            _err(f"Model server failed to start (exit code {code}). "
                 f"Last lines of {log_path}:")
            _print_tail(seen)
            return 1
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    _err(f"Model server did not start within {timeout:g} s (default_startup_timeout); "
         f"stopping it. Last lines of {log_path}:")
    _print_tail(seen + _read_from(log_path, offset + len(seen)))
    _stop_process(PidRecord(child.pid, process_start_time(child.pid)), STOP_TIMEOUT_S,
                  reap=child)
    remove_pid_file(pid_path, child.pid)
    return 1


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def _print_tail(data: bytes, lines: int = 20) -> None:
    tail = data.decode("utf-8", "replace").splitlines()[-lines:]
    for line in tail:
        print(f"  {line}", file=sys.stderr)
    if not tail:
        print("  (no output)", file=sys.stderr)
    sys.stderr.flush()


def stop(workdir: Path | None = None, timeout_s: float = STOP_TIMEOUT_S) -> int:
    pid_path = pid_file_path(workdir)
    record = running_server(pid_path)
    if record is None:
        print("Model server is not currently running.", flush=True)
        return 1
    try:
        _stop_process(record, timeout_s)
    except PermissionError:
        _err(f"not permitted to stop the model server (pid {record.pid})")
        return 1
    remove_pid_file(pid_path, record.pid)
    print("Model server stopped.", flush=True)
    return 0


def _stop_process(record: PidRecord, timeout_s: float,
                  reap: subprocess.Popen | None = None) -> None:
    """SIGTERM, wait up to ``timeout_s``; then SIGKILL the process, its process group (unless
    it is ours) and the process groups of its children (workers run in their own sessions)."""
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reap is not None:
            reap.poll()
        if not is_alive(record):
            return
        time.sleep(_POLL_S)
    if not is_alive(record):
        return
    children = _children(record.pid)
    try:
        pgid = os.getpgid(record.pid)
    except ProcessLookupError:
        pgid = None
    for target in ([pgid] if pgid is not None and pgid != os.getpgrp() else []):
        _kill(os.killpg, target)
    _kill(os.kill, record.pid)
    for child in children:
        _kill(os.killpg, child)  # a worker is its session's leader: pgid == pid
        _kill(os.kill, child)
    if reap is not None:
        try:
            reap.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _kill(fn, target: int) -> None:
    try:
        fn(target, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc; empty where there is none)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields and len(fields) > 1 and fields[1] == str(pid):
                found.append(int(entry))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["install-aliases"]:
        from .aliases import main as install_aliases

        return install_aliases(argv[1:])
    if argv and argv[0] in ("run", "graph"):  # the author's commands (local_cli.py)
        from .local_cli import main as local_main

        return local_main(argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already explained
        return exc.code if isinstance(exc.code, int) else 2
    if args.version:
        print(f"dagserve Version is {__version__}")
        return 0
    if args.stop:
        return stop()
    try:
        cfg = config_from_args(args)
        validate(cfg)
    except DagserveError as exc:
        _err(exc.message)
        return 1
    if args.foreground:
        return run_foreground(cfg)
    for warning in cfg.startup_warnings:  # the detached server logs it to ts_log.log
        _err(f"WARNING: {warning}")
    # --start, or no action at all (TorchServe starts the server then, too).
    return start_background(cfg, argv)


if __name__ == "__main__":
    sys.exit(main())
