"""``dagserve run``: one request through a workflow without a server (real workers started
and stopped), its output on stdout and its trace on stderr; and ``workflow-archiver
--graph``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server_utils import ECHO_HANDLER, _child_env, build_mar, build_war

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
CHAIN = "models:\n  echo:\n    url: echo.mar\ndag:\n  pre: [echo]\n  echo: [post]\n"


def dagserve(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "dagserve.engine.cli", *map(str, args)],
                          cwd=cwd, capture_output=True, timeout=timeout, env=_child_env(None))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    work = tmp_path_factory.mktemp("local-run")
    build_mar(work, "echo", ECHO_HANDLER)
    (work / "chain.yaml").write_text(CHAIN)
    (work / "in.txt").write_bytes(b"hello")
    return work


def test_run_a_spec_prints_output_and_trace(store):
    proc = dagserve("run", "chain.yaml", "--model-store", ".", "--input", "in.txt",
                    "--handler", FIXTURES / "wf_handler.py", cwd=store)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"post(pre(hello))\n"
    table = proc.stderr.decode().splitlines()
    assert table[0].startswith("trace ") and "workflow chain  status 200" in table[0]
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert set(rows) == {"pre", "echo", "post"}
    assert all(row[1:4] == ["ran", "1", "ok"] for row in rows.values())
    assert rows["pre"][-2:] == ["5", "10"]  # bytes in and out
    # nothing is left running: the command returned, and its workers with it


def test_run_a_war_with_json_trace_and_a_failing_node(store):
    build_war(store, "fails", "models:\n  retry-attempts: 1\ndag:\n  pre: [always_fail]\n",
              (FIXTURES / "wf_handler.py").read_text(), handler_file="wf_handler.py")
    proc = dagserve("run", "fails.war", "--model-store", ".", "--input", "-", "--trace",
                    "json", cwd=store)
    assert proc.returncode == 1
    assert proc.stdout == b""
    err = proc.stderr.decode()
    trace = json.loads(err[:err.rindex("}") + 1])
    assert trace["status"] == 500 and trace["failedNode"] == "always_fail"
    node = next(n for n in trace["nodes"] if n["node"] == "always_fail")
    assert [a["attempt"] for a in node["attempts"]] == [1, 2]
    assert "dagserve run: 500" in err


def test_run_reports_bad_input_clearly(store):
    bad = store / "bad.yaml"
    bad.write_text("models: {}\ndag:\n  a: [a]\n")
    proc = dagserve("run", bad, "--model-store", ".", "--input", "in.txt", cwd=store)
    assert proc.returncode == 1 and b"Invalid workflow specification" in proc.stderr
    proc = dagserve("run", "missing.yaml", "--model-store", ".", "--input", "in.txt",
                    cwd=store)
    assert proc.returncode == 2 and b"does not exist" in proc.stderr
    proc = dagserve("run", "chain.yaml", "--input", "in.txt", cwd=store)
    assert proc.returncode == 2 and b"--model-store" in proc.stderr


def test_workflow_archiver_writes_the_picture_by_extension(store):
    for name, first in (("chain.mmd", "flowchart TD"), ("chain.gv", 'digraph "pics" {')):
        proc = subprocess.run(
            [sys.executable, "-m", "dagserve.archiver.workflow_cli", "--workflow-name", "pics",
             "--spec-file", "chain.yaml", "--handler", str(FIXTURES / "wf_handler.py"),
             "--export-path", ".", "-f", "--graph", name],
            cwd=store, capture_output=True, text=True, timeout=60, env=_child_env(None))
        assert proc.returncode == 0, proc.stderr
        assert (store / name).read_text().startswith(first)
    proc = subprocess.run(
        [sys.executable, "-m", "dagserve.archiver.workflow_cli", "--workflow-name", "pics2",
         "--spec-file", "chain.yaml", "--handler", str(FIXTURES / "wf_handler.py"),
         "--export-path", ".", "--graph", "chain.svg"],
        cwd=store, capture_output=True, text=True, timeout=60, env=_child_env(None))
    assert proc.returncode == 1 and "chain.svg" in proc.stderr
    assert not (store / "pics2.war").exists()
