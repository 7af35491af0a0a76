"""A workflow's function nodes in one worker process, and chains of them run in one worker
call (engine/node_groups.py, engine/handler/node_group.py, scheduler.run_segment):
the worker side on its own, the plan's fusion rules, and the real server (one process for the
nodes, each node still its own model with its own metrics and trace, retries and timeouts
named by node)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from types import SimpleNamespace

import networkx as nx
import pytest
import requests

from dagserve.engine.node_groups import fusable, node_groups
from dagserve.engine.handler.service import ServiceConfig, load_service
from dagserve.engine.messages import Param, Request
from dagserve.engine.scheduler import Plan
from server_utils import serving_workflows, traced_wfpredict, worker_pids
from test_workflow_api import build_war

HANDLER = textwrap.dedent('''
    import os
    import time

    _calls = {"flaky_mid": 0}


    def _text(row):
        value = row.get("body", row.get("data"))
        return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


    def tag_a(data, context):
        if data is None:
            return None
        return [f"a[{os.getpid()}]({_text(row)})" for row in data]


    def tag_b(data, context):
        if data is None:
            return None
        return [f"b[{os.getpid()}]({_text(row)})" for row in data]


    def tag_c(data, context):
        if data is None:
            return None
        return [f"c:{context.model_name}:{len(data)}({_text(row)})" for row in data]


    def flaky_mid(data, context):
        if data is None:
            return None
        _calls["flaky_mid"] += 1
        if _calls["flaky_mid"] % 2 == 1:
            raise RuntimeError("fails every other call")
        return [f"flaky({_text(row)})" for row in data]


    def refuse(data, context):
        if data is None:
            return None
        from ts.utils.util import PredictionException
        raise PredictionException("refused this input", 422)


    def chunky(data, context):
        if data is None:
            return None
        from ts.handler_utils.utils import send_intermediate_predict_response
        send_intermediate_predict_response([f"part({_text(row)})" for row in data],
                                           context.request_ids, "Intermediate", 200, context)
        return [f"end({_text(row)})" for row in data]


    def sleepy(data, context):
        if data is None:
            return None
        time.sleep(5)
        return ["late" for _ in data]
''')


@pytest.fixture()
def group(tmp_path):
    (tmp_path / "fg_handler.py").write_text(HANDLER)
    from dagserve.engine.handler import ts_alias

    ts_alias.install()
    nodes = ("tag_a", "tag_b", "tag_c", "flaky_mid", "refuse", "sleepy", "chunky")
    return load_service(ServiceConfig(tmp_path, "wf__tag_a", "fg_handler:tag_a",
                                      group={n: [f"wf__{n}", f"fg_handler:{n}", ""]
                                             for n in nodes}))


def _req(rid: str, body: bytes, nodes: str) -> Request:
    return Request(rid, [Param("body", None, body)], {}, nodes)


def test_a_chain_runs_in_one_call_with_a_trail(group):
    [resp], _ = group.predict([_req("r1", b"x", "tag_a,tag_b,tag_c")])
    pid = os.getpid()
    assert resp.code == 200
    assert resp.value.decode() == f"c:wf__tag_c:1(b[{pid}](a[{pid}](x)))"
    assert resp.trail[0::3] == [200, 200, 200]  # code, microseconds, bytes out per node
    assert resp.trail[-1] == len(resp.value)


def test_one_batch_with_requests_for_different_nodes(group):
    resps, _ = group.predict([_req("r1", b"1", "tag_c"), _req("r2", b"2", "tag_a"),
                              _req("r3", b"3", "tag_c")])
    assert [r.value.decode() for r in resps] == [
        "c:wf__tag_c:2(1)", f"a[{os.getpid()}](2)", "c:wf__tag_c:2(3)"]
    assert all(r.trail is None for r in resps)  # one node each: nothing to account


def test_a_failing_middle_node_answers_with_its_input(group):
    [resp], _ = group.predict([_req("r1", b"x", "tag_a,flaky_mid,tag_c")])
    assert resp.code == 503
    assert resp.trail[0::3] == [200, 503]
    assert resp.value.decode() == f"a[{os.getpid()}](x)"  # what flaky_mid was given
    [resp], _ = group.predict([_req("r2", resp.value, "flaky_mid,tag_c")])  # the retry
    assert resp.code == 200 and resp.value.decode() == f"c:wf__tag_c:1(flaky(a[{os.getpid()}](x)))"


def test_a_refusal_keeps_its_status_and_message(group):
    [resp], _ = group.predict([_req("r1", b"x", "tag_a,refuse,tag_c")])
    assert resp.code == 422 and resp.message == "refused this input"
    assert resp.trail[0::3] == [200, 422]


def test_each_node_keeps_its_own_time_limit(group):
    [resp], _ = group.predict([_req("r1", b"x", "tag_a:5,sleepy:0.2,tag_c:5")])
    assert resp.code == 504
    assert resp.message == "timed out after 200 ms"
    assert resp.trail[0::3] == [200, 504]
    assert resp.trail[4] < 2_000_000  # interrupted, not slept through (microseconds)


def test_a_streaming_node_streams_when_last_and_is_collected_when_not(group):
    sent = []
    group.context.intermediate_sender = sent.extend  # what the worker's serve loop sets
    [resp], _ = group.predict([_req("r1", b"x", "chunky,tag_c")])
    assert resp.value.decode() == "c:wf__tag_c:1(part(x)end(x))" and sent == []
    [resp], _ = group.predict([_req("r2", b"y", "tag_a,chunky")])  # last: to the client
    assert [r.value for r in sent] == [f"part(a[{os.getpid()}](y))".encode()]
    assert resp.value.decode() == f"end(a[{os.getpid()}](y))"
    sent.clear()
    [resp], _ = group.predict([_req("r3", b"z", "chunky")])
    assert [r.value for r in sent] == [b"part(z)"]


def test_unknown_node_is_an_error_for_that_request_only(group):
    resps, _ = group.predict([_req("r1", b"x", "nope"), _req("r2", b"y", "tag_c")])
    assert resps[0].code == 500 and "nope" in resps[0].message
    assert resps[1].code == 200


def _compiled(edges: dict[str, list[str]], kinds: dict[str, str], batch: dict | None = None):
    graph = nx.DiGraph()
    for node, kind in kinds.items():
        graph.add_node(node, kind=kind, settings=SimpleNamespace(
            batch_size=(batch or {}).get(node, 1), max_batch_delay_ms=50, min_workers=1,
            max_workers=1, timeout_ms=1000, retry_attempts=0))
    for parent, children in edges.items():
        for child in children:
            graph.add_edge(parent, child)
    order = list(nx.topological_sort(graph))
    return SimpleNamespace(
        graph=graph, topo_order=order, start=order[0],
        leaves=[n for n in order if graph.out_degree(n) == 0],
        parents={n: list(graph.predecessors(n)) for n in order},
        children={n: list(graph.successors(n)) for n in order})


def test_groups_follow_settings_and_fusion_follows_the_shape():
    kinds = {"a": "function", "b": "function", "m": "model", "c": "function",
             "d": "function", "e": "function"}
    compiled = _compiled({"a": ["b"], "b": ["m"], "m": ["c"], "c": ["d", "e"]}, kinds,
                         batch={"e": 4})
    groups = node_groups(compiled, compiled.topo_order)
    assert groups == [["a", "b", "c", "d"]]  # e's batch size differs: a worker of its own
    fused = fusable(compiled, groups)
    assert fused == {"b"}  # c has two children: d runs after c, but not in c's call
    plan = Plan.from_compiled(compiled, fused)
    assert [n.name for n in plan.nodes["a"].fused] == ["b"]
    assert plan.nodes["c"].fused == () and plan.nodes["m"].fused == ()
    # a node model with its own config.properties entry (e.g. a Ray placement) differs too
    own = {"b": {"1.0": {"ray": {"num_cpus": 1}}}}
    assert node_groups(compiled, compiled.topo_order, own.get) == [["a", "c", "d"]]


# -- the real server ----------------------------------------------------------------------

SPECS = {
    "fused": """
        models:
          min-workers: 1
          batch-size: 4
          max-batch-delay: 5
          retry-attempts: 1
          timeout-ms: 3000
        dag:
          tag_a: [tag_b]
          tag_b: [tag_c]
    """,
    "flaky": """
        models:
          retry-attempts: 2
        dag:
          tag_a: [flaky_mid]
          flaky_mid: [tag_c]
    """,
    "refusing": """
        models:
          min-workers: 1
        dag:
          tag_a: [refuse]
          refuse: [tag_c]
    """,
    "slow_middle": """
        models:
          timeout-ms: 400
          retry-attempts: 0
        dag:
          tag_a: [sleepy]
          sleepy: [tag_c]
    """,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("function_groups")
    models, wars = work / "model_store", work / "wf_store"
    models.mkdir()
    wars.mkdir()
    handler = work / "fg_handler.py"
    handler.write_text(HANDLER)
    for name, spec in SPECS.items():
        result = build_war(wars, name, spec, handler=handler)
        assert result.returncode == 0, result.stderr
    with serving_workflows(work, models, wars, SPECS) as srv:
        yield srv


def test_the_function_nodes_share_one_worker_process(server):
    pids = [worker_pids(server, f"fused__{node}") for node in ("tag_a", "tag_b", "tag_c")]
    assert len(pids[0]) == 1 and pids[0] == pids[1] == pids[2]
    r = requests.post(f"{server.inference_url}/wfpredict/fused", data=b"x", timeout=30)
    assert r.status_code == 200, r.text
    (pid,) = pids[0]
    assert r.text == f"c:fused__tag_c:1(b[{pid}](a[{pid}](x)))"


def test_each_node_keeps_its_metrics_and_trace(server):
    before = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    r, nodes = traced_wfpredict(server, "fused", b"t")
    assert r.status_code == 200
    for node in ("tag_a", "tag_b", "tag_c"):
        [attempt] = nodes[node]["attempts"]
        assert attempt["outcome"] == "ok" and attempt["code"] == 200
        assert attempt["workerMs"] is not None
    assert nodes["tag_c"]["attempts"][0]["bytesOut"] == len(r.content)
    after = requests.get(f"{server.metrics_url}/metrics", timeout=10).text

    def ok_calls(text: str, model: str) -> float:
        for line in text.splitlines():
            if line.startswith("dagserve_calls_total{") and f'model_name="{model}"' in line \
                    and 'outcome="ok"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    for node in ("tag_a", "tag_b", "tag_c"):
        assert ok_calls(after, f"fused__{node}") == ok_calls(before, f"fused__{node}") + 1


def test_a_failing_middle_node_is_retried_from_where_it_failed(server):
    for i in range(3):
        r = requests.post(f"{server.inference_url}/wfpredict/flaky", data=f"{i}".encode(),
                          timeout=30)
        assert r.status_code == 200, r.text
        assert r.text.endswith(f"(flaky(a[{_one(worker_pids(server, 'flaky__tag_a'))}]({i})))")


def _one(pids: set[int]) -> int:
    (pid,) = pids
    return pid


def test_a_refusal_names_its_node(server):
    r = requests.post(f"{server.inference_url}/wfpredict/refusing", data=b"x", timeout=30)
    assert r.status_code == 422
    assert r.json()["message"] == "Error executing refuse: refused this input"


def test_a_slow_middle_node_times_out_under_its_own_name(server):
    r = requests.post(f"{server.inference_url}/wfpredict/slow_middle", data=b"x", timeout=30)
    assert r.status_code == 500
    assert r.json()["message"].startswith("Error executing sleepy: timed out after 400 ms")
    # the worker is free again at once: the next request is served
    r = requests.post(f"{server.inference_url}/wfpredict/fused", data=b"y", timeout=30)
    assert r.status_code == 200


def test_concurrent_requests_are_batched_through_the_chain(server):
    from concurrent.futures import ThreadPoolExecutor

    def call(i: int) -> str:
        r = requests.post(f"{server.inference_url}/wfpredict/fused", data=f"{i}".encode(),
                          timeout=30)
        assert r.status_code == 200, r.text
        return r.text

    with ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(call, range(64)))
    for i, text in enumerate(outputs):
        assert text.endswith(f"(a[{_one(worker_pids(server, 'fused__tag_a'))}]({i})))")
    sizes = {int(text.split(":")[2].split("(")[0]) for text in outputs}
    assert max(sizes) > 1, sizes  # tag_c saw batches of several requests


def test_unregistering_the_workflow_stops_the_shared_worker(server):
    (pid,) = worker_pids(server, "refusing__tag_a")
    r = requests.delete(f"{server.management_url}/workflows/refusing", timeout=60)
    assert r.status_code == 200
    for node in ("tag_a", "refuse", "tag_c"):
        assert requests.get(f"{server.management_url}/models/refusing__{node}",
                            timeout=10).status_code == 404
    import time

    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or \
        "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert json.loads(requests.get(f"{server.management_url}/workflows",
                                   timeout=10).text)  # the others are still there
