"""Traces recorded by the scheduler (fake queues, no server), the ring, the trace flag,
skipped nodes, histograms, and the DAG pictures (with every kind of node and edge)."""

from __future__ import annotations

import asyncio
import json

import pytest

from dagserve.engine import tracing
from dagserve.engine.histogram import Histogram, quantile
from dagserve.engine.messages import Param, Request
from dagserve.engine.registry import ModelStats
from dagserve.engine.scheduler import NodeFailed, run_plan
from dagserve.engine.tracing import Trace, Tracer, TraceRing, asked_for, note_skipped
from dagserve.workflows import load_spec
from dagserve.workflows.render import RenderError, format_for_path, graph_model, render
from test_scheduler import FakeQueue, Target, plan, tag


def run_traced(p, targets, trace):
    async def go():
        token = tracing.current.set(trace)
        try:
            return await run_plan(p, targets, Request("r1", [Param("body", None, b"in")], {}))
        finally:
            tracing.current.reset(token)
    return asyncio.run(go())


def test_scheduler_records_attempts_bytes_and_retries():
    p = plan({"a": ["b"]}, retries=2)
    targets = {"a": Target(FakeQueue(tag("a"))), "b": Target(FakeQueue(tag("b"), failures=1))}
    trace = Trace("r1", "workflow", "wf")
    out = run_traced(p, targets, trace)
    assert out.value == b"in>a>b"
    a, b = trace.nodes["a"], trace.nodes["b"]
    assert a.status == b.status == "ran"
    assert [x.outcome for x in b.attempts] == ["error", "ok"]
    assert [x.number for x in b.attempts] == [1, 2]
    assert a.attempts[0].bytes_in == 2 and a.attempts[0].bytes_out == len(b"in>a")
    assert b.attempts[1].bytes_in == len(b"in>a")
    assert b.attempts[1].worker_id == "fake-worker" and b.attempts[1].batch_size == 1
    assert targets["b"].stats.retried == 1 and targets["a"].stats.retried == 0
    assert b.attempts[0].started <= b.attempts[0].ended <= b.attempts[1].started


def test_scheduler_records_timeout_and_cancelled_siblings():
    p = plan({"s": ["slow", "bad"]}, timeout_s=0.05, retries=0)
    targets = {"s": Target(FakeQueue(tag("s"))),
               "slow": Target(FakeQueue(tag("slow"), delay=5)),
               "bad": Target(FakeQueue(tag("bad"), delay=0.01, failures=1, code=500))}
    trace = Trace("r1", "workflow", "wf")
    with pytest.raises(NodeFailed):
        run_traced(p, targets, trace)
    statuses = {n: r.status for n, r in trace.nodes.items()}
    assert statuses["bad"] == "failed"
    assert trace.nodes["slow"].attempts[0].outcome in ("timeout", "cancelled")
    p2 = plan({"t": []}, timeout_s=0.05, retries=0)
    trace2 = Trace("r2", "workflow", "wf")
    with pytest.raises(NodeFailed):
        run_traced(p2, {"t": Target(FakeQueue(tag("t"), delay=5))}, trace2)
    assert trace2.nodes["t"].attempts[0].outcome == "timeout"
    assert trace2.nodes["t"].attempts[0].code == 504


def test_untraced_run_records_nothing():
    p = plan({"a": []})
    queue = FakeQueue(tag("a"))
    assert tracing.current.get() is None
    out = asyncio.run(run_plan(p, {"a": Target(queue)},
                               Request("r", [Param("body", None, b"x")], {})))
    assert out.value == b"x>a"


def test_note_skipped_counts_and_records():
    stats_target = Target(FakeQueue(tag("a")))
    note_skipped("a", stats_target, "outside a trace")
    assert stats_target.stats.skipped == 1
    trace = Trace("r", "workflow", "wf", ["a", "b"])
    token = tracing.current.set(trace)
    try:
        note_skipped("b", stats_target, "when: false")
    finally:
        tracing.current.reset(token)
    as_json = trace.to_json()
    b = next(n for n in as_json["nodes"] if n["node"] == "b")
    assert (b["status"], b["reason"], b["attempts"]) == ("skipped", "when: false", [])
    assert next(n for n in as_json["nodes"] if n["node"] == "a")["status"] == "not run"
    assert stats_target.stats.skipped == 2


def test_trace_flag_from_header_or_query():
    assert asked_for({"X-Dagserve-Trace": "1"}, "")
    assert asked_for({"X-Dagserve-Trace": "true"}, "")
    assert not asked_for({"X-Dagserve-Trace": "0"}, "")
    assert asked_for({}, "a=1&trace=true")
    assert asked_for({}, "trace=1")
    assert not asked_for({}, "trace=false")
    assert not asked_for({}, "retrace=true")
    assert not asked_for({}, "")


def test_ring_is_bounded_and_scoped_by_target():
    ring = TraceRing(3)
    for i in range(5):
        ring.add(Trace(f"t{i}", "workflow", "wf" if i % 2 else "other"))
    assert len(ring) == 3
    assert ring.get("workflow", "wf", "t0") is None
    assert ring.get("workflow", "wf", "t3").id == "t3"
    assert ring.get("model", "wf", "t3") is None
    assert [t.id for t in ring.recent("workflow", "other")] == ["t4", "t2"]
    assert len(TraceRing(0)) == 0


def test_tracer_keeps_asked_and_failed_traces_only():
    tracer = Tracer(10)
    kept = tracer.begin("workflow", "wf", Request("a", [], {}))
    tracer.end(kept, 200)
    quiet = tracer.begin("workflow", "wf", Request("b", [], {}), keep=False)
    tracer.end(quiet, 200)
    failed = tracer.begin("workflow", "wf", Request("c", [], {}), keep=False)
    tracer.end(failed, 500, "boom", "n")
    assert [t.id for t in tracer.ring.recent("workflow", "wf")] == ["c", "a"]
    summary = tracer.failed("model", "m", "d", failed.started, 503, "busy", "m")
    assert summary.to_json()["failedNode"] == "m"
    assert summary.to_json()["nodes"][0]["reason"] == "busy"


def test_histogram_buckets_and_quantile():
    h = Histogram((0.001, 0.01, 0.1))
    for v in (0.0005, 0.001, 0.005, 0.05, 5.0):
        h.observe(v)
    assert h.counts == [2, 1, 1, 1]
    assert h.cumulative() == [("0.001", 2), ("0.01", 3), ("0.1", 4), ("+Inf", 5)]
    assert quantile(h.bounds, h.counts, 0.5) == pytest.approx(0.001 + 0.009 * 0.5)
    assert quantile(h.bounds, [0, 0, 0, 0], 0.5) is None
    stats = ModelStats()
    stats.count(504, 0.2)
    stats.count(200, 0.002)
    assert (stats.timeouts, stats.status_5xx, stats.latency.count) == (1, 1, 2)


# -- pictures -------------------------------------------------------------------------

CHAIN = "models:\n  cls:\n    url: cls.mar\ndag:\n  pre: [cls]\n  cls: [post]\n"

# What a workflow with conditions, foreach, inputs and a shared model describes itself as
# (the keys CompiledWorkflow.to_json() gives them).
RICH = {
    "name": "rich", "start": "pre", "leaves": ["report"],
    "nodes": {
        "pre": {"kind": "function"},
        "detect": {"kind": "model", "url": "det.mar"},
        "classify": {"kind": "model", "sharedModel": "resnet/2.0", "foreach": "boxes[*]"},
        "alert": {"kind": "function", "when": "score > `0.9`", "onError": "skip"},
        "report": {"kind": "function", "inputs": {"raw": "$request", "found": "detect"}},
    },
    "edges": [["pre", "detect"], ["detect", "classify"], ["classify", "alert"],
              ["alert", "report"]],
    "inputsEdges": [["$request", "report", "raw"], ["detect", "report", "found"]],
}


def test_mermaid_and_dot_of_a_plain_chain():
    described = load_spec(CHAIN, name="chain").to_json()
    mermaid = render(described, "mermaid")
    assert mermaid.splitlines()[:6] == ["flowchart TD", '    n0("pre")',
                                        '    n1["cls<br/>cls.mar"]', '    n2("post")',
                                        "    n0 --> n1", "    n1 --> n2"]
    dot = render(described, "dot")
    assert dot.startswith('digraph "chain" {')
    assert '"pre" -> "cls";' in dot and '"cls" -> "post";' in dot
    assert json.loads(render(described, "json"))["edges"][0] == {"from": "pre", "to": "cls",
                                                                 "kind": "data"}


def test_every_kind_of_node_and_edge_is_drawn_distinctly():
    graph = graph_model(RICH)
    assert graph["nodes"][0] == {"id": "$request", "kind": "request"}
    kinds = [(e["from"], e["to"], e["kind"]) for e in graph["edges"]]
    assert ("$request", "report", "inputs") in kinds and ("pre", "detect", "data") in kinds
    mermaid = render(RICH, "mermaid")
    assert '{{"classify<br/>shared: resnet/2.0<br/>foreach: boxes[*]"}}' in mermaid
    assert 'n0(["request"])' in mermaid
    assert '-. "raw" .->' in mermaid and '-. "found" .->' in mermaid
    assert "when: score #gt; `0.9`" in mermaid
    assert "classDef conditional" in mermaid and "classDef foreach" in mermaid
    assert "classDef shared" in mermaid
    dot = render(RICH, "dot")
    assert '"classify" [label="classify\\nshared: resnet/2.0\\nforeach: boxes[*]", ' \
           'shape="hexagon"' in dot
    assert 'peripheries="2"' in dot
    assert 'style="rounded,dashed"' in dot  # the conditional function node
    assert '"$request" -> "report" [style="dotted"' in dot
    assert "on-error: skip" in dot


def test_picture_format_by_extension():
    assert format_for_path("a.mmd") == format_for_path("a.mermaid") == "mermaid"
    assert format_for_path("a.DOT") == format_for_path("x/a.gv") == "dot"
    with pytest.raises(RenderError, match="png"):
        format_for_path("a.png")
    with pytest.raises(RenderError):
        render(RICH, "svg")
