"""The general scheduler (engine/flow.py) over fake node targets: what each node receives
when some parents are skipped, skips that propagate, forks, foreach order, and the record of
what ran and why."""

from __future__ import annotations

import asyncio
import json

import pytest

from dagserve.engine.flow import FlowPlan, RunRecord, request_deadline_ms, run_flow
from dagserve.engine.errors import BadRequestError, ServiceUnavailableError
from dagserve.engine.messages import Param, Request, Response
from dagserve.engine.registry import ModelStats
from dagserve.engine.scheduler import NodeFailed, Plan
from dagserve.workflows import load_spec


class Pool:
    def check_can_serve(self) -> None:
        pass

    def abandon(self, future) -> None:  # a timed-out or cancelled attempt frees its worker
        pass


class Queue:
    """Answers each job on the next loop turn with ``fn(params)``; keeps every job's params;
    refuses a job beyond ``capacity`` waiting ones, as BatchQueue does."""

    def __init__(self, fn, capacity: int = 100):
        self.fn = fn
        self.capacity = capacity
        self.waiting = 0
        self.most_waiting = 0
        self.jobs: list[list[Param]] = []

    def submit(self, request: Request, probe=None) -> asyncio.Future:
        """``probe``: a tracing.Attempt when the request is traced (BatchQueue.submit)."""
        if self.waiting >= self.capacity:
            raise ServiceUnavailableError("queue full")
        self.jobs.append(request.params)
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        fut = asyncio.get_running_loop().create_future()

        def answer() -> None:
            self.waiting -= 1
            if not fut.done():
                fut.set_result(Response(request.id, 200, self.fn(request.params)))

        asyncio.get_running_loop().call_soon(answer)
        return fut


class Target:
    def __init__(self, fn):
        self.queue, self.pool, self.stats = Queue(fn), Pool(), ModelStats()


def echo(params: list[Param]) -> bytes:
    if len(params) == 1:
        return params[0].value
    return json.dumps({p.name: json.loads(p.value) for p in params}).encode()


def run(spec: str, body: dict, fns=None) -> tuple[Response, dict[str, Target], RunRecord]:
    compiled = load_spec(spec)
    plan = Plan.from_compiled(compiled)
    targets = {n: Target((fns or {}).get(n, echo)) for n in compiled.topo_order}
    record = RunRecord()
    request = Request("r1", [Param("body", "application/json", json.dumps(body).encode())])
    resp = asyncio.run(run_flow(FlowPlan.from_compiled(compiled, plan), targets, request,
                                record=record))
    return resp, targets, record


DIAMOND = """
models: {}
dag:
  start: [left, right]
  left: [join]
  right: [join]
nodes:
  left: {when: "go == 'left' || go == 'both'"}
  right: {when: "go == 'right' || go == 'both'"}
"""


def test_a_join_gets_the_parents_that_ran_by_name():
    resp, targets, record = run(DIAMOND, {"go": "left"})
    assert [p.name for p in targets["join"].queue.jobs[0]] == ["left"]
    assert json.loads(resp.value) == {"go": "left"}  # join, the one answering node
    assert targets["right"].queue.jobs == []
    assert record.ran == ["start", "left", "join"]
    assert "when" in record.skipped["right"]


def test_both_branches_run_at_once_and_join():
    resp, targets, record = run(DIAMOND, {"go": "both"})
    assert sorted(p.name for p in targets["join"].queue.jobs[0]) == ["left", "right"]
    assert sorted(record.ran) == ["join", "left", "right", "start"]


def test_a_node_whose_parents_were_all_skipped_is_skipped():
    resp, targets, record = run(DIAMOND, {"go": "nowhere"})
    assert record.skipped["join"] == "all its parents were skipped"
    assert json.loads(resp.value) == {"go": "nowhere"}  # the start node answers
    assert all(not targets[n].queue.jobs for n in ("left", "right", "join"))


def test_foreach_keeps_the_items_order_and_types():
    spec = "models: {}\ndag:\n  start: [each]\nnodes:\n  each: {foreach: 'xs'}\n"
    resp, targets, _ = run(spec, {"xs": ["a", 2, {"k": 1}]})
    assert json.loads(resp.value) == ["a", 2, {"k": 1}]
    jobs = targets["each"].queue.jobs
    assert [(p[0].content_type.split(";")[0], p[0].value) for p in jobs] == [
        ("text/plain", b"a"), ("application/json", b"2"), ("application/json", b'{"k": 1}')]


def test_foreach_never_overfills_the_node_queue():
    spec = "models: {}\ndag:\n  start: [each]\nnodes:\n  each: {foreach: 'xs'}\n"
    compiled = load_spec(spec)
    plan = Plan.from_compiled(compiled)
    targets = {"start": Target(echo), "each": Target(echo)}
    targets["each"].queue.capacity = 10
    request = Request("r", [Param("body", "application/json",
                                  json.dumps({"xs": list(range(150))}).encode())])
    resp = asyncio.run(run_flow(FlowPlan.from_compiled(compiled, plan), targets, request))
    assert json.loads(resp.value) == list(range(150))
    assert targets["each"].queue.most_waiting == 10


def test_foreach_not_a_list_names_the_node():
    spec = "models: {}\ndag:\n  start: [each]\nnodes:\n  each: {foreach: 'xs'}\n"
    with pytest.raises(NodeFailed) as info:
        run(spec, {"xs": 3})
    assert info.value.node == "each" and info.value.status == 400


def test_on_error_default_replaces_the_output():
    spec = ("models: {retry-attempts: 0}\ndag:\n  start: [bad]\n"
            "nodes:\n  bad: {on-error: {default: [1, 2]}}\n")

    compiled = load_spec(spec)
    plan = Plan.from_compiled(compiled)
    targets = {"start": Target(echo), "bad": Target(echo)}

    def failing_submit(request, probe=None):
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(Response(request.id, 500, b"", None, {}, "broken"))
        return fut

    targets["bad"].queue.submit = failing_submit
    record = RunRecord()
    resp = asyncio.run(run_flow(FlowPlan.from_compiled(compiled, plan), targets,
                                Request("r", [Param("body", None, b"{}")]), record=record))
    assert json.loads(resp.value) == [1, 2]
    assert record.failed["bad"] == "broken" and "bad" in record.ran


def test_request_timeout_header_lowers_never_raises():
    assert request_deadline_ms({}, 2000) == 2000
    assert request_deadline_ms({"X-Request-Timeout-Ms": "500"}, 2000) == 500
    assert request_deadline_ms({"x-request-timeout-ms": "5000"}, 2000) == 2000
    assert request_deadline_ms({"X-Request-Timeout-Ms": "300"}, None) == 300
    with pytest.raises(BadRequestError):
        request_deadline_ms({"X-Request-Timeout-Ms": "-1"}, None)
