"""Node timeouts free the worker, ``job_queue_size`` is exact, and workers start however long
the temporary directory's path is.

The server of this module runs with a TMPDIR over 150 characters: before workers talked
on an abstract Unix socket, their socket path did not fit (``AF_UNIX path too long``) and no
model could start."""

from __future__ import annotations

import re
import threading
import time

import pytest
import requests

from conftest import REQUEST_TIMEOUT, assert_no_processes_left, recover
from server_utils import build_mar, build_war, start_server

# Each attempt appends "start <seconds>" and, if it runs to its end, "end <seconds>".
NAP_FUNCTIONS = '''
import os
import signal
import time

MARKS = os.environ["FAULT_MARKS"]


def _mark(text):
    with open(MARKS, "a") as fh:
        fh.write(text + "\\n")


def _seconds(row):
    value = row.get("body") if row.get("body") is not None else row.get("data")
    return float(value.decode() if isinstance(value, (bytes, bytearray)) else value)


def nap(data, context):
    if data is None:
        return None
    out = []
    for row in data:
        seconds = _seconds(row)
        _mark(f"start nap {seconds}")
        time.sleep(seconds)
        _mark(f"end nap {seconds}")
        out.append("rested")
    return out


def stubborn(data, context):
    """Cannot be interrupted: the interrupt signal is blocked while it sleeps."""
    if data is None:
        return None
    out = []
    for row in data:
        seconds = _seconds(row)
        _mark(f"start stubborn {seconds}")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        time.sleep(seconds)
        _mark(f"end stubborn {seconds}")
        out.append("rested")
    return out
'''

SLOW_MODEL = '''
import os
import time


def handle(data, context):
    if data is None:
        return None
    for row in data:
        with open(os.environ["FAULT_MARKS"], "a") as fh:
            fh.write("start slow\\n")
        time.sleep(float(bytes(row["body"]).decode()))
    return ["slept"] * len(data)
'''

NODE_SPEC = """
models:
  min-workers: 1
  timeout-ms: 1000
  retry-attempts: 2
dag:
  {node}: []
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("timeout-faults")
    store, wars = work / "store", work / "wars"
    marks = work / "marks.txt"
    marks.write_text("")
    build_mar(store, "slow", SLOW_MODEL)
    for node in ("nap", "stubborn"):
        build_war(wars, node, NODE_SPEC.format(node=node), NAP_FUNCTIONS,
                  handler_file="nap_functions.py")
    long_tmp = work / ("t" * 60) / ("m" * 60) / "p"
    long_tmp.mkdir(parents=True)
    assert len(str(long_tmp)) > 150
    srv = start_server(work, model_store=store, config={"job_queue_size": 2},
                       env={"FAULT_MARKS": str(marks), "TMPDIR": str(long_tmp)},
                       args=["--workflow-store", str(wars), "--disable-token-auth",
                             "--enable-model-api", "--ncs"])
    try:
        for node in ("nap", "stubborn"):
            resp = requests.post(srv.management_url + "/workflows", timeout=120,
                                 params={"url": f"{node}.war"})
            assert resp.status_code == 200, resp.text
        resp = requests.post(srv.management_url + "/models", timeout=120,
                             params={"url": "slow.mar", "initial_workers": 1,
                                     "synchronous": "true"})
        assert resp.status_code == 200, resp.text
        yield srv, marks, long_tmp
    finally:
        known = srv.worker_pids()
        srv.stop()
        assert_no_processes_left(srv.pid, known)
    assert not list(long_tmp.iterdir())  # its work directory is gone


def lines(marks, prefix: str) -> list[str]:
    return [line for line in marks.read_text().splitlines() if line.startswith(prefix)]


def wait_for(marks, line: str, n: int) -> None:
    assert recover(lambda: len(lines(marks, line)) >= n) is not None


def post(srv, path: str, body: bytes, out: dict, key: str) -> None:
    try:
        resp = requests.post(srv.inference_url + path, data=body, timeout=REQUEST_TIMEOUT)
        out[key] = (resp.status_code, resp.content)
    except requests.RequestException as exc:
        out[key] = (type(exc).__name__, b"")


def node_pid(srv, workflow: str) -> int:
    [desc] = requests.get(f"{srv.management_url}/models/{workflow}__{workflow}",
                          timeout=REQUEST_TIMEOUT).json()
    return next(w["pid"] for w in desc["workers"] if w["status"] == "READY")


def test_a_timed_out_node_is_interrupted_and_a_request_behind_it_is_served(setup, figures):
    """Regression (issue 17, 3): the node slept 3 s with timeout-ms 1000 and two retries; each
    attempt ran to its end, and a request queued behind it waited for that. The request
    behind goes to the node's model directly (``/predictions/nap__nap``, no node timeout),
    so the order of the marks shows what the worker did."""
    srv, marks, _ = setup
    results: dict = {}
    slow = threading.Thread(target=post, args=(srv, "/wfpredict/nap", b"3", results, "slow"))
    slow.start()
    wait_for(marks, "start nap 3.0", 1)
    post(srv, "/predictions/nap__nap", b"0", results, "behind")
    slow.join(REQUEST_TIMEOUT + 5)
    figures.requests = 2
    figures.failures = 1  # the one that asked for more than its timeout, as it should
    assert results["behind"] == (200, b"rested")
    status, body = results["slow"]
    assert status == 500 and b"timed out after 1000 ms" in body
    assert len(lines(marks, "start nap 3.0")) == 3  # the attempt and its two retries
    assert lines(marks, "end nap 3.0") == []  # none ran to its end
    order = lines(marks, "")
    assert order.index("end nap 0.0") < len(order) - 1  # served before the last attempt
    started = time.monotonic()
    post(srv, "/wfpredict/nap", b"0", results, "after")
    figures.recover_s = round(time.monotonic() - started, 2)
    assert results["after"] == (200, b"rested")


def test_a_node_that_ignores_the_interrupt_gets_its_worker_replaced(setup, figures):
    srv, marks, _ = setup
    before = node_pid(srv, "stubborn")
    results: dict = {}
    post(srv, "/wfpredict/stubborn", b"30", results, "slow")
    figures.requests = 1
    figures.failures = 1
    status, body = results["slow"]
    assert status == 500 and b"timed out after 1000 ms" in body
    assert lines(marks, "end stubborn 30.0") == []
    figures.recover_s = recover(lambda: node_pid_or_none(srv) not in (None, before))
    post(srv, "/wfpredict/stubborn", b"0", results, "after")
    assert results["after"] == (200, b"rested")


def node_pid_or_none(srv) -> int | None:
    try:
        return node_pid(srv, "stubborn")
    except StopIteration:
        return None


def queue_pending(srv) -> float:
    text = requests.get(srv.metrics_url + "/metrics", timeout=REQUEST_TIMEOUT).text
    match = re.search(r'dagserve_queue_pending\{model_name="slow",model_version="1.0"\} (\S+)',
                      text)
    return float(match.group(1)) if match else -1


def test_job_queue_size_2_admits_exactly_two_waiting_requests(setup, figures):
    """Regression (issue 17, 6): job_queue_size=2 admitted 4 requests."""
    srv, marks, _ = setup
    results: dict = {}
    threads = [threading.Thread(target=post, args=(srv, "/predictions/slow", b"2", results, "1"))]
    threads[0].start()
    wait_for(marks, "start slow", 1)
    for key in ("2", "3"):  # one held by the busy worker, one in the queue
        threads.append(threading.Thread(target=post, args=(srv, "/predictions/slow", b"0",
                                                           results, key)))
        threads[-1].start()
    assert recover(lambda: queue_pending(srv) == 1) is not None
    post(srv, "/predictions/slow", b"0", results, "4")
    for t in threads:
        t.join(REQUEST_TIMEOUT + 5)
    figures.requests = 4
    figures.failures = 1
    assert results["4"][0] == 503 and b"is full (2 requests)" in results["4"][1]
    assert [results[k][0] for k in "123"] == [200, 200, 200]
