"""The worker process end to end: spawned as ``python -m dagserve.engine.workers.main`` against a
Unix socket this test listens on, the way the frontend does."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from dagserve.engine.workers import protocol
from dagserve.engine.messages import Param, Request

REPO = Path(__file__).resolve().parents[1]

ECHO_HANDLER = """
    import torch
    from ts.context import Context
    from ts.utils.util import PredictionException

    def handle(data, context):
        assert isinstance(context, Context)
        if data is None:
            print("echo handler loaded")  # stdout goes to the model log
            return None
        if any(row.get("body") == "explode" for row in data):
            raise PredictionException("asked to explode", 422)
        out = []
        for i, row in enumerate(data):
            value = next(iter(row.values()))
            out.append({"id": context.get_request_id(i), "type": type(value).__name__,
                        "value": value if not isinstance(value, bytes) else value.hex(),
                        "header": context.get_request_header(i, "X-Test"),
                        "threads": torch.get_num_threads()})
        context.set_response_content_type(1, "application/x-echo")
        context.set_response_status(202, "Accepted", idx=2)
        context.metrics.add_counter("EchoRows", len(data))
        return out
"""


@pytest.fixture
def sock_dir():
    # Unix socket paths are limited to ~100 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="dsw", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_worker(model_dir: Path, sock_dir: Path, handler: str, **extra):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock_path = sock_dir / "w.sock"
    listener.bind(str(sock_path))
    listener.listen(1)
    listener.settimeout(60)
    settings = {"socket": str(sock_path), "model_dir": str(model_dir), "model_name": "echo",
                "handler": handler, "gpu_id": None, "batch_size": 3, "threads": 1,
                "decode_input": True, "server_version": "test", "config_file": None,
                **extra}
    proc = subprocess.Popen([sys.executable, "-m", "dagserve.engine.workers.main",
                             "--settings", json.dumps(settings)],
                            cwd=model_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker never connected: {err.decode()[-2000:]}")
    finally:
        listener.close()
    conn.settimeout(60)
    return proc, conn


def test_worker_serves_batches_and_exits_on_close(tmp_path, sock_dir):
    (tmp_path / "echo_handler.py").write_text(textwrap.dedent(ECHO_HANDLER))
    proc, conn = start_worker(tmp_path, sock_dir, "echo_handler.py")
    try:
        meta, _ = protocol.recv_frame(conn)
        assert meta == {"op": "ready", "pid": proc.pid}

        batch = [
            Request("r1", [Param("body", "application/json", b'{"n": 1}')], {"X-Test": "yes"}),
            Request("r2", [Param("data", "text/plain", "h\u00e9".encode())]),
            Request("r3", [Param("body", "application/octet-stream", b"\x00\x01")]),
        ]
        protocol.send_frame(conn, protocol.encode_predict(batch))
        meta, body = protocol.recv_frame(conn)
        assert meta["op"] == "result"
        resps = protocol.decode_result(meta, body)
        assert [r.id for r in resps] == ["r1", "r2", "r3"]
        assert [r.code for r in resps] == [200, 200, 202]
        assert [json.loads(r.value) for r in resps] == [
            {"id": "r1", "type": "dict", "value": {"n": 1}, "header": "yes", "threads": 1},
            {"id": "r2", "type": "str", "value": "h\u00e9", "header": None, "threads": 1},
            {"id": "r3", "type": "bytes", "value": "0001", "header": None, "threads": 1},
        ]
        assert resps[1].content_type == "application/x-echo" and resps[0].content_type is None
        assert resps[2].message == "Accepted"
        names = [m["name"] for m in meta["metrics"]]
        assert "EchoRows" in names and "HandlerTime" in names

        # a failing batch is answered, and the worker keeps serving
        protocol.send_frame(conn, protocol.encode_predict(
            [Request("x", [Param("body", "text/plain", b"explode")])]))
        resps = protocol.decode_result(*protocol.recv_frame(conn))
        assert (resps[0].code, resps[0].message) == (422, "asked to explode")
    finally:
        conn.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b"echo handler loaded" in out
    assert b"loading model echo" in err


def test_worker_reports_load_failure(tmp_path, sock_dir):
    (tmp_path / "broken.py").write_text(textwrap.dedent("""
        class Broken:
            def initialize(self, context):
                raise RuntimeError("weights are missing\\nsecond line")
            def handle(self, data, context):
                return data
    """))
    proc, conn = start_worker(tmp_path, sock_dir, "broken.py")
    try:
        meta, _ = protocol.recv_frame(conn)
    finally:
        conn.close()
    assert meta == {"op": "load_failed",
                    "message": "RuntimeError: weights are missing second line"}
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert b"Traceback" in err and b"weights are missing" in err


def test_worker_reports_unknown_handler(tmp_path, sock_dir):
    proc, conn = start_worker(tmp_path, sock_dir, "nowhere_handler")
    try:
        meta, _ = protocol.recv_frame(conn)
    finally:
        conn.close()
    assert meta["op"] == "load_failed"
    assert meta["message"].startswith("ImportError: handler module 'nowhere_handler' not found")
    proc.communicate(timeout=60)
    assert proc.returncode == 1


def test_bad_settings_exit_with_usage_error():
    result = subprocess.run([sys.executable, "-m", "dagserve.engine.workers.main", "--settings", "{}"],
                            capture_output=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert b"needs a non-empty string 'socket'" in result.stderr


STUBBORN_HANDLER = """
    import pathlib, time

    def handle(data, context):
        if data is None:
            return None
        out = []
        for row in data:
            seconds = float(row["body"])
            if seconds > 1:
                pathlib.Path("started").write_text("yes")
            try:
                time.sleep(seconds)
            except Exception:  # a handler that swallows errors cannot swallow the interrupt
                pass
            pathlib.Path("finished").write_text("yes")
            out.append("slept")
        return out
"""


def test_sigusr1_interrupts_the_running_batch_and_the_worker_serves_on(tmp_path, sock_dir):
    """The frontend's cooperative interrupt: inside a batch SIGUSR1 stops it (even through
    a handler's ``except Exception``) and the worker answers ``interrupted``; outside one it
    does nothing."""
    import signal
    import time

    (tmp_path / "stubborn.py").write_text(textwrap.dedent(STUBBORN_HANDLER))
    proc, conn = start_worker(tmp_path, sock_dir, "stubborn.py")
    try:
        assert protocol.recv_frame(conn)[0]["op"] == "ready"
        os.kill(proc.pid, signal.SIGUSR1)  # outside a batch: nothing happens
        protocol.send_frame(conn, protocol.encode_predict(
            [Request("long", [Param("body", "text/plain", b"60")])]))
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGUSR1)
        meta, _ = protocol.recv_frame(conn)
        assert meta == {"op": "interrupted"}
        assert not (tmp_path / "finished").exists()
        protocol.send_frame(conn, protocol.encode_predict(
            [Request("quick", [Param("body", "text/plain", b"0")])]))
        resps = protocol.decode_result(*protocol.recv_frame(conn))
        assert [(r.id, r.code, r.value) for r in resps] == [("quick", 200, b"slept")]
    finally:
        conn.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b"batch interrupted" in err
