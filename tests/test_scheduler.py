"""The workflow scheduler over fake node targets (no worker processes): inputs per node,
concurrency of ready nodes, timeouts, retries with backoff, and cancellation on failure."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from dagserve.engine.registry import ModelStats
from dagserve.engine.scheduler import NodeFailed, NodePlan, Plan, run_plan
from dagserve.engine.messages import Param, Request, Response


class FakePool:
    def __init__(self) -> None:
        self.abandoned: list[asyncio.Future] = []

    def check_can_serve(self) -> None:
        pass

    def abandon(self, future: asyncio.Future) -> None:
        self.abandoned.append(future)


class FakeQueue:
    """Answers each submit after ``delay`` seconds with ``fn(params)``; records what it saw."""

    def __init__(self, fn, delay: float = 0.0, failures: int = 0, code: int = 503):
        self.fn = fn
        self.delay = delay
        self.failures = failures
        self.code = code
        self.calls: list[list[Param]] = []
        self.cancelled = 0
        self.times: list[float] = []

    def submit(self, request: Request, probe=None) -> asyncio.Future:
        """``probe``: a tracing.Attempt of a traced request, told its batch and worker."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.calls.append(request.params)
        self.times.append(time.perf_counter())
        fail = len(self.calls) <= self.failures

        def answer() -> None:
            if fut.cancelled():
                self.cancelled += 1
                return
            if probe is not None:
                probe.dispatched(0.0, 1, "fake-worker")
            if fail:
                fut.set_result(Response(request.id, self.code, b"", None, {}, "boom",
                                        self.delay))
            else:
                fut.set_result(Response(request.id, 200, self.fn(request.params),
                                        handler_s=self.delay))

        loop.call_later(self.delay, answer)
        return fut


class Target:
    def __init__(self, queue: FakeQueue):
        self.queue = queue
        self.pool = FakePool()
        self.stats = ModelStats()


def plan(edges: dict[str, list[str]], timeout_s: float = 5.0, retries: int = 1) -> Plan:
    names = list(dict.fromkeys([*edges, *(c for cs in edges.values() for c in cs)]))
    parents = {n: tuple(p for p, cs in edges.items() if n in cs) for n in names}
    start = next(n for n in names if not parents[n])
    leaves = tuple(n for n in names if not edges.get(n))
    return Plan(start, leaves, {n: NodePlan(n, parents[n], tuple(edges.get(n, ())), timeout_s,
                                            retries) for n in names})


def tag(name: str):
    """A node that appends its name to whatever it received."""
    def fn(params: list[Param]) -> bytes:
        return b"+".join(p.value for p in params) + b">" + name.encode()
    return fn


def run(p: Plan, targets: dict, body: bytes = b"in") -> Response:
    request = Request("r1", [Param("body", "text/plain", body)], {})
    return asyncio.run(run_plan(p, targets, request))


def test_chain_passes_each_output_as_body():
    p = plan({"a": ["b"], "b": ["c"]})
    qs = {n: FakeQueue(tag(n)) for n in "abc"}
    out = run(p, {n: Target(q) for n, q in qs.items()})
    assert out.value == b"in>a>b>c"
    assert [x.name for x in qs["b"].calls[0]] == ["body"]
    assert qs["b"].calls[0][0].content_type is None
    assert qs["a"].calls[0][0].content_type == "text/plain"


def test_diamond_runs_branches_concurrently_and_fans_in_by_parent_name():
    p = plan({"s": ["x", "y"], "x": ["j"], "y": ["j"]})
    qs = {"s": FakeQueue(tag("s")), "x": FakeQueue(tag("x"), delay=0.3),
          "y": FakeQueue(tag("y"), delay=0.3), "j": FakeQueue(tag("j"))}
    out = run(p, {n: Target(q) for n, q in qs.items()})
    assert sorted(x.name for x in qs["j"].calls[0]) == ["x", "y"]
    assert out.value.endswith(b">j")
    # both branches were submitted before either answered
    assert abs(qs["x"].times[0] - qs["y"].times[0]) < 0.25


def test_several_leaves_merge_into_json_by_leaf_name():
    p = plan({"s": ["a", "b"]})
    qs = {"s": FakeQueue(tag("s")), "a": FakeQueue(lambda ps: b'{"v": 1}'),
          "b": FakeQueue(lambda ps: b"plain text")}
    out = run(p, {n: Target(q) for n, q in qs.items()})
    assert out.content_type == "application/json"
    assert json.loads(out.value) == {"a": {"v": 1}, "b": "plain text"}


def test_node_that_fails_then_succeeds_is_retried():
    p = plan({"a": ["b"]}, retries=2)
    qs = {"a": FakeQueue(tag("a")), "b": FakeQueue(tag("b"), failures=2)}
    out = run(p, {n: Target(q) for n, q in qs.items()})
    assert out.value == b"in>a>b"
    assert len(qs["b"].calls) == 3
    gaps = [t2 - t1 for t1, t2 in zip(qs["b"].times, qs["b"].times[1:])]
    assert gaps[1] > gaps[0]  # exponential backoff


def test_node_that_always_fails_is_named_and_cancels_other_branches():
    p = plan({"s": ["bad", "slow"]}, retries=1)
    slow = FakeQueue(tag("slow"), delay=2.0)
    qs = {"s": FakeQueue(tag("s")), "bad": FakeQueue(tag("bad"), failures=99), "slow": slow}
    targets = {n: Target(q) for n, q in qs.items()}
    start = time.perf_counter()
    with pytest.raises(NodeFailed) as info:
        run(p, targets)
    assert info.value.node == "bad"
    assert str(info.value).startswith("Error executing bad")
    assert time.perf_counter() - start < 1.5  # did not wait for the slow branch
    # the cancelled branch's attempt is reported, so the worker running it is freed
    [abandoned] = targets["slow"].pool.abandoned
    assert abandoned.cancelled()


def test_timeout_cancels_the_attempt_and_drops_the_late_result():
    p = plan({"a": ["b"]}, timeout_s=0.1, retries=1)
    slow = FakeQueue(tag("b"), delay=0.5)
    qs = {"a": FakeQueue(tag("a")), "b": slow}

    targets = {n: Target(q) for n, q in qs.items()}

    async def go():
        request = Request("r", [Param("body", None, b"x")], {})
        with pytest.raises(NodeFailed) as info:
            await run_plan(p, targets, request)
        assert "timed out" in info.value.reason
        await asyncio.sleep(0.6)  # let the late answers arrive: they find cancelled futures

    asyncio.run(go())
    assert len(slow.calls) == 2
    assert slow.cancelled == 2
    # each timed-out attempt is reported to the pool, which frees the worker running it
    abandoned = targets["b"].pool.abandoned
    assert len(abandoned) == 2 and all(f.cancelled() for f in abandoned)
    assert targets["a"].pool.abandoned == []


def test_client_error_of_a_node_is_not_retried_and_keeps_its_status():
    p = plan({"a": ["b"]}, retries=3)
    qs = {"a": FakeQueue(tag("a")), "b": FakeQueue(tag("b"), failures=99, code=400)}
    with pytest.raises(NodeFailed) as info:
        run(p, {n: Target(q) for n, q in qs.items()})
    assert info.value.status == 400
    assert len(qs["b"].calls) == 1


def test_a_chain_cancelled_from_outside_abandons_its_running_node_and_stops():
    p = plan({"a": ["b"], "b": ["c"]}, retries=1)
    qs = {"a": FakeQueue(tag("a")), "b": FakeQueue(tag("b"), delay=1.0),
          "c": FakeQueue(tag("c"))}
    targets = {n: Target(q) for n, q in qs.items()}

    async def go():
        request = Request("r", [Param("body", None, b"x")], {})
        task = asyncio.ensure_future(run_plan(p, targets, request))
        await asyncio.sleep(0.1)  # a answered, b is running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(1.1)  # b's late answer finds a cancelled future

    asyncio.run(go())
    [abandoned] = targets["b"].pool.abandoned
    assert abandoned.cancelled() and qs["b"].cancelled == 1
    assert qs["c"].calls == []  # nothing ran after the cancellation
    assert targets["a"].stats.status_2xx == 1 and targets["b"].stats.requests == 0


def test_a_chain_counts_every_attempt_of_every_node():
    p = plan({"a": ["b"], "b": ["c"]}, retries=2)
    qs = {"a": FakeQueue(tag("a")), "b": FakeQueue(tag("b"), failures=1),
          "c": FakeQueue(tag("c"))}
    targets = {n: Target(q) for n, q in qs.items()}
    assert run(p, targets).value == b"in>a>b>c"
    b = targets["b"].stats
    assert (b.requests, b.status_5xx, b.status_2xx, b.retried) == (2, 1, 1, 1)
    assert targets["c"].stats.status_2xx == 1


def test_a_fused_call_that_waited_fails_the_node_the_worker_stopped_not_its_head():
    """The worker keeps each fused node's own limit from when the node starts; the
    frontend's timer starts at submission. A call that waited longer than the sum of the
    limits (a loaded machine, a worker still starting) must still be answered by the worker,
    which names the node that ran too long (scheduler.fused_call_limit_s)."""
    from dagserve.engine.scheduler import fused_call_limit_s

    class SlowToAnswer:
        def submit(self, request: Request, probe=None, nodes=None) -> asyncio.Future:
            assert nodes == "head:0.1,tail:0.1"
            fut = asyncio.get_running_loop().create_future()
            # 0.35 s after submission (more than 0.1 + 0.1): the tail ran past its own limit
            answer = Response(request.id, 504, b"head's output", None, {},
                              "timed out after 100 ms", 0.1, [200, 1000, 13, 504, 100000, 0])
            asyncio.get_running_loop().call_later(0.35, fut.set_result, answer)
            return fut

    tail = NodePlan("tail", ("head",), (), 0.1, 0)
    head = NodePlan("head", (), ("tail",), 0.1, 0, fused=(tail,), call_names="head:0.1,tail:0.1")
    targets = {"head": Target(SlowToAnswer()), "tail": Target(SlowToAnswer())}
    with pytest.raises(NodeFailed) as failed:
        run(Plan("head", ("tail",), {"head": head, "tail": tail}), targets)
    assert failed.value.node == "tail" and "timed out after 100 ms" in failed.value.reason
    assert fused_call_limit_s((head, tail)) == pytest.approx(1.2)  # a worker that never answers
