"""Traces, metrics, DAG pictures and the dashboard's data against the real server: traced
and untraced requests through /wfpredict and /predictions, retries, failures, timeouts, the
bounded ring, the Prometheus families, GET /workflows/{w}/graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from model_builders import handler_archive
from server_utils import build_war, start_server

WF_HANDLER = (Path(__file__).parent / "fixtures" / "workflows" / "wf_handler.py").read_text()
TRACE = {"X-Dagserve-Trace": "1", "Content-Type": "text/plain"}
TEXT = {"Content-Type": "text/plain"}
RING = 12

SPECS = {
    "chain": "models:\n  echo:\n    url: echo.mar\ndag:\n  pre: [echo]\n  echo: [post]\n",
    "retry": "models:\n  retry-attempts: 2\ndag:\n  pre: [flaky]\n",
    "failing": "models:\n  retry-attempts: 0\ndag:\n  pre: [always_fail]\n",
    "timeout": "models:\n  timeout-ms: 300\n  retry-attempts: 0\ndag:\n  pre: [slow]\n",
}

# the workflow language's keys: a foreach node and a node whose condition is false
FLOW_SPEC = """models: {}
dag:
  listing: [each, never]
nodes:
  each: {foreach: "items[*]"}
  never: {when: "`false`"}
"""
FLOW_HANDLER = """import json


def _text(value):
    return bytes(value).decode() if isinstance(value, (bytes, bytearray)) else str(value)


def listing(data, context):
    if data is None:
        return None
    return [json.dumps({"items": ["a", "b", "c"]}) for _ in data]


def each(data, context):
    if data is None:
        return None
    return [_text(row.get("body")).upper() for row in data]


def never(data, context):
    if data is None:
        return None
    return ["never runs" for _ in data]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("observe")
    models, wars = work / "model_store", work / "wf_store"
    models.mkdir()
    handler_archive("echo", "echo_handler.py", models)
    handler_archive("errors", "errors_handler.py", models)
    for name, spec in SPECS.items():
        build_war(wars, name, spec, WF_HANDLER, handler_file="wf_handler.py")
    build_war(wars, "flow", FLOW_SPEC, FLOW_HANDLER, handler_file="flow_handler.py")
    with start_server(work, model_store=models, config={"trace_ring_size": RING},
                      args=["--workflow-store", str(wars), "--disable-token-auth", "--ncs",
                            "--models", "echo=echo.mar", "errors=errors.mar",
                            "--workflows", "all"],
                      env={"WF_SLOW_S": "1.5"}, timeout=120) as srv:
        yield srv


def wfpredict(server, name, headers=TEXT, data=b"hello", query=""):
    return requests.post(f"{server.inference_url}/wfpredict/{name}{query}", data=data,
                         headers=headers, timeout=60)


def trace_of(server, kind, name, trace_id):
    return requests.get(f"{server.management_url}/{kind}/{name}/traces/{trace_id}", timeout=10)


def test_traced_chain_records_every_node(server):
    r = wfpredict(server, "chain", TRACE)
    assert r.status_code == 200 and r.text == "post(pre(hello))"
    trace_id = r.headers["X-Dagserve-Trace-Id"]
    assert trace_id == r.headers["x-request-id"]
    t = trace_of(server, "workflows", "chain", trace_id).json()
    assert t["status"] == 200 and t["kind"] == "workflow" and t["target"] == "chain"
    assert t["version"] == "1.0"  # the workflow version that ran
    assert [n["node"] for n in t["nodes"]] == ["pre", "echo", "post"]
    outputs = {"pre": b"pre(hello)", "echo": b"pre(hello)", "post": b"post(pre(hello))"}
    inputs = {"pre": b"hello", "echo": outputs["pre"], "post": outputs["echo"]}
    for node in t["nodes"]:
        assert node["status"] == "ran", node
        assert node["model"] == f"chain__{node['node']}"
        [attempt] = node["attempts"]
        assert attempt["outcome"] == "ok" and attempt["code"] == 200
        assert attempt["batchSize"] == 1
        assert attempt["workerId"].isdigit()
        assert attempt["queueWaitMs"] >= 0 and attempt["workerMs"] > 0
        assert attempt["durationMs"] >= attempt["workerMs"]
        assert attempt["bytesIn"] == len(inputs[node["node"]])
        assert attempt["bytesOut"] == len(outputs[node["node"]])
    starts = [n["startMs"] for n in t["nodes"]]
    assert starts == sorted(starts)
    assert t["totalMs"] >= t["nodes"][-1]["endMs"]


def test_foreach_items_and_skipped_nodes_in_trace_metrics_and_graph(server):
    r = wfpredict(server, "flow", TRACE)
    assert r.status_code == 200, r.text
    assert r.json() == ["A", "B", "C"]
    t = trace_of(server, "workflows", "flow", r.headers["X-Dagserve-Trace-Id"]).json()
    nodes = {n["node"]: n for n in t["nodes"]}
    assert list(nodes) == ["listing", "each", "never"]
    assert nodes["listing"]["status"] == "ran"
    each = nodes["each"]
    assert each["status"] == "ran"
    assert sorted(a["item"] for a in each["attempts"]) == [0, 1, 2]
    assert all(a["outcome"] == "ok" and a["bytesIn"] == 1 for a in each["attempts"])
    never = nodes["never"]
    assert never["status"] == "skipped" and never["attempts"] == []
    assert "`false`" in never["reason"] and "was false" in never["reason"]
    assert sample(scrape(server), "dagserve_calls_total", workflow="flow", node="never",
                  outcome="skipped") >= 1
    mermaid = requests.get(f"{server.management_url}/workflows/flow/graph",
                           params={"format": "mermaid"}, timeout=10).text
    assert '[["each<br/>foreach: items[*]"]]' in mermaid
    assert "when: `false`" in mermaid and "classDef conditional" in mermaid


def test_untraced_request_has_no_trace(server):
    r = wfpredict(server, "chain")
    assert r.status_code == 200
    assert "X-Dagserve-Trace-Id" not in r.headers
    assert trace_of(server, "workflows", "chain", r.headers["x-request-id"]).status_code == 404


def test_query_parameter_traces_a_model_prediction(server):
    r = requests.post(f"{server.inference_url}/predictions/echo?trace=true", data=b"abc",
                      headers=TEXT, timeout=30)
    assert r.status_code == 200 and r.content == b"abc"
    t = trace_of(server, "models", "echo", r.headers["X-Dagserve-Trace-Id"]).json()
    [node] = t["nodes"]
    assert node["node"] == "echo" and node["status"] == "ran" and node["version"] == "1.0"
    # ?trace=true is not passed to the handler (other query parameters are, as in TorchServe)
    assert node["attempts"][0]["bytesIn"] == 3 and node["attempts"][0]["bytesOut"] == 3
    listed = requests.get(f"{server.management_url}/models/echo/traces", timeout=10).json()
    assert listed["traces"][0]["traceId"] == t["traceId"]
    # the same id is not a trace of another model or of a workflow
    assert trace_of(server, "workflows", "chain", t["traceId"]).status_code == 404


def test_retry_shows_each_attempt_and_counts_in_metrics(server):
    r = wfpredict(server, "retry", TRACE)
    assert r.status_code == 200, r.text
    t = trace_of(server, "workflows", "retry", r.headers["X-Dagserve-Trace-Id"]).json()
    flaky = next(n for n in t["nodes"] if n["node"] == "flaky")
    assert [a["outcome"] for a in flaky["attempts"]] == ["error", "ok"]
    assert flaky["attempts"][0]["code"] >= 500 and flaky["attempts"][0]["message"]
    assert [a["attempt"] for a in flaky["attempts"]] == [1, 2]
    families = scrape(server)
    retried = sample(families, "dagserve_calls_total", workflow="retry", node="flaky",
                     outcome="retried")
    assert retried >= 1


def test_failed_request_is_traced_without_asking(server):
    r = wfpredict(server, "failing")
    assert r.status_code == 500
    t = trace_of(server, "workflows", "failing", r.headers["X-Dagserve-Trace-Id"]).json()
    assert t["status"] == 500 and t["failedNode"] == "always_fail"
    assert "always_fail" in t["error"] and t["error"] == r.json()["message"]
    failed = next(n for n in t["nodes"] if n["node"] == "always_fail")
    assert failed["reason"] == t["error"]
    listed = requests.get(f"{server.management_url}/workflows/failing/traces", timeout=10)
    assert listed.json()["traces"][0]["failedNode"] == "always_fail"


def test_failed_predictions_and_bad_bodies_are_traced_without_asking(server):
    r = requests.post(f"{server.inference_url}/predictions/errors", data=b"generic",
                      headers=TEXT, timeout=30)
    assert r.status_code >= 500
    t = trace_of(server, "models", "errors", r.headers["X-Dagserve-Trace-Id"]).json()
    assert (t["status"], t["failedNode"]) == (r.status_code, "errors")
    bad = requests.post(f"{server.inference_url}/wfpredict/chain", data=b"no parts",
                        headers={"Content-Type": "multipart/form-data; boundary=x"}, timeout=30)
    assert bad.status_code == 400
    t = trace_of(server, "workflows", "chain", bad.headers["X-Dagserve-Trace-Id"]).json()
    assert t["status"] == 400 and t["error"] == bad.json()["message"]


def test_timeout_is_an_attempt_outcome_and_a_metric(server):
    r = wfpredict(server, "timeout", TRACE)
    assert r.status_code == 500
    t = trace_of(server, "workflows", "timeout", r.headers["X-Dagserve-Trace-Id"]).json()
    slow = next(n for n in t["nodes"] if n["node"] == "slow")
    assert slow["status"] == "failed"
    assert [a["outcome"] for a in slow["attempts"]] == ["timeout"]
    assert sample(scrape(server), "dagserve_calls_total", workflow="timeout", node="slow",
                  outcome="timeout") >= 1


def test_unknown_traces_are_clear_404s(server):
    r = trace_of(server, "workflows", "chain", "no-such-trace")
    assert r.status_code == 404 and r.json()["type"] == "TraceNotFoundException"
    r = requests.get(f"{server.management_url}/workflows/nope/traces", timeout=10)
    assert r.status_code == 404 and r.json()["code"] == 404
    r = requests.get(f"{server.management_url}/workflows/chain/traces?limit=-1", timeout=10)
    assert r.status_code == 400


def test_ring_keeps_only_the_last_traces(server):
    ids = [wfpredict(server, "chain", TRACE).headers["X-Dagserve-Trace-Id"]
           for _ in range(RING + 2)]
    assert trace_of(server, "workflows", "chain", ids[0]).status_code == 404
    assert trace_of(server, "workflows", "chain", ids[-1]).status_code == 200
    listed = requests.get(f"{server.management_url}/workflows/chain/traces?limit=1000",
                          timeout=10).json()["traces"]
    assert len(listed) <= RING


# -- metrics ----------------------------------------------------------------------------

def scrape(server):
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families, family, suffix="", **labels):
    # the parser names a counter family without its _total; its samples keep it
    fam = families.get(family) or families[family.removesuffix("_total")]
    name = family + suffix
    for s in fam.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no {name} sample with {labels}")


def test_metrics_histograms_per_node_and_workflow(server):
    before = scrape(server)
    n0 = sample(before, "dagserve_workflow_requests_total", workflow="chain", status="200")
    for _ in range(3):
        assert wfpredict(server, "chain").status_code == 200
    after = scrape(server)
    assert sample(after, "dagserve_workflow_requests_total", workflow="chain",
                  status="200") == n0 + 3
    assert after["dagserve_workflow_request_duration_seconds"].type == "histogram"
    count = sample(after, "dagserve_request_duration_seconds", "_count", workflow="chain",
                   node="echo", model_name="chain__echo")
    inf = sample(after, "dagserve_request_duration_seconds", "_bucket", workflow="chain",
                 node="echo", le="+Inf")
    assert count == inf >= 3
    assert sample(after, "dagserve_queue_wait_seconds", "_count", node="echo") >= 3
    assert sample(after, "dagserve_batch_size", "_bucket", node="echo", le="1.0") >= 3
    assert sample(after, "dagserve_calls_total", model_name="echo", workflow="",
                  outcome="ok") >= 1
    assert sample(after, "dagserve_workflow_requests_total", workflow="failing",
                  status="500") >= 1
    # TorchServe's names are still there, unchanged
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    assert "# TYPE ts_inference_requests_total counter" in text
    assert "# TYPE Requests2XX counter" in text
    assert "# TYPE dagserve_calls_total counter" in text


# -- pictures and the dashboard's data ------------------------------------------------------

def test_graph_endpoint_in_three_formats(server):
    url = f"{server.management_url}/workflows/chain/graph"
    mermaid = requests.get(url, params={"format": "mermaid"}, timeout=10)
    assert mermaid.status_code == 200 and mermaid.text.startswith("flowchart TD")
    assert 'n1["echo<br/>echo.mar"]' in mermaid.text and "n0 --> n1" in mermaid.text
    dot = requests.get(url, params={"format": "dot"}, timeout=10).text
    assert '"pre" -> "echo";' in dot and '"echo" -> "post";' in dot
    graph = requests.get(url, timeout=10).json()
    assert [n["id"] for n in graph["nodes"]] == ["pre", "echo", "post"]
    bad = requests.get(url, params={"format": "png"}, timeout=10)
    assert bad.status_code == 400 and "mermaid" in bad.json()["message"]
    assert requests.get(f"{server.management_url}/workflows/nope/graph",
                        timeout=10).status_code == 404


def test_dashboard_page_and_data(server):
    page = requests.get(f"{server.management_url}/dashboard", timeout=10)
    assert page.status_code == 200 and "dashboard.js" in page.text
    script = requests.get(f"{server.management_url}/dashboard/dashboard.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
    data = requests.get(f"{server.management_url}/dashboard/data", timeout=10).json()
    assert [m["model"] for m in data["models"]] == ["echo", "errors"]  # not node models
    chain = next(w for w in data["workflows"] if w["name"] == "chain")
    assert set(chain["nodes"]) == {"pre", "echo", "post"}
    assert chain["nodes"]["echo"]["calls"] >= 1
    assert data["traceRingSize"] == RING


def test_dagserve_graph_command_asks_the_running_server(server, tmp_path):
    import subprocess
    import sys

    from server_utils import _child_env

    def graph(*args):
        return subprocess.run([sys.executable, "-m", "dagserve.engine.cli", "graph", *args,
                               "--management-address", server.management_url],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env=_child_env(None))

    proc = graph("chain", "--out", "chain.dot")
    assert proc.returncode == 0, proc.stderr
    assert '"pre" -> "echo";' in (tmp_path / "chain.dot").read_text()
    proc = graph("chain")
    assert proc.returncode == 0 and proc.stdout.startswith("flowchart TD")
    proc = graph("nope")
    assert proc.returncode == 1 and "404 Workflow not found: nope" in proc.stderr
