"""Run one workflow request over a compiled DAG with anyio.

Every node whose parents are done starts at once. A node gets what TorchServe gives it: the
start node the request's own parameters, a node with one parent ``{"body": bytes}``, a node
with several ``{parent_name: bytes}``. Each attempt at a node is bounded by its
``timeout-ms`` (the attempt is cancelled: its job leaves the queue, and a late result is
dropped) and retried ``retry-attempts`` times with exponential backoff. The first node that
fails for good cancels everything still running for the request. All tasks live in the
request's task group, so nothing outlives it.

A linear chain (each node has at most one child and one parent: the common shape) needs no
concurrency: its nodes run one after another in the request's own task, with the same
timeout, retry and failure semantics, and without a task group per request.

The timeout of an attempt is a timer on the attempt's job future: when it fires it cancels
the future (the queue skips a cancelled job; a late result is dropped), the worker running
it is interrupted when nobody else waits for its batch (``WorkerPool.abandon``: the worker is
free for the next attempt or request, see docs/reliability.md) and the attempt counts as
timed out. That is what a cancel scope around the wait did, for a fraction of its
cost on every node call; cancellation from outside (a failed sibling branch, the server
stopping) still reaches the waiting task as usual.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace
from typing import Protocol

import anyio

from . import tracing
from .errors import DagserveError
from .fused_trail import account_fused, outcome_of
from .messages import Param, Request, Response

BACKOFF_BASE_S = 0.05
BACKOFF_MAX_S = 2.0
FUSED_SLACK_MIN_S = 1.0


def fused_call_limit_s(nodes) -> float:
    """The frontend's time limit for one worker call running several nodes. The worker
    keeps each node's own limit, counted from when the node starts; the frontend's timer
    starts at submission, before the call's queue wait and the nodes before. At the sum of
    the limits it would fire first whenever the call waited (under load, or for a worker
    still starting) and fail the head node for a later node's time; so it waits the sum
    again, and at least a second more: it is there for a worker that never answers."""
    total = sum(node.timeout_s for node in nodes)
    return total + max(FUSED_SLACK_MIN_S, total)


class NodeTarget(Protocol):
    """What the scheduler needs of a node: a queue to submit to (a model version)."""

    queue: object


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str
    parents: tuple[str, ...]
    children: tuple[str, ...]
    timeout_s: float
    retries: int
    # the nodes after this one that run in its worker call (nodes sharing a
    # worker, each the only child of the one before: node_groups.py, run_segment)
    fused: tuple["NodePlan", ...] = ()
    call_names: str = ""  # with fused nodes: what the worker call names (segment_names)

    @property
    def end(self) -> "NodePlan":
        """The last node of this node's worker call: whose output the call answers with."""
        return self.fused[-1] if self.fused else self


class NodeFailed(Exception):
    def __init__(self, node: str, status: int, reason: str):
        super().__init__(f"Error executing {node}: {reason}")
        self.node = node
        self.status = status
        self.reason = reason


@dataclass
class Plan:
    """The compiled DAG reduced to what a request needs, built once per registration."""

    start: str
    leaves: tuple[str, ...]
    nodes: dict[str, NodePlan]
    chain: tuple[NodePlan, ...] | None = field(init=False)  # the nodes in order, if linear

    def __post_init__(self) -> None:
        self.chain = _linear_chain(self)

    @classmethod
    def from_compiled(cls, compiled, fused: frozenset[str] | set[str] = frozenset()) -> "Plan":
        """``fused``: the nodes that run in their parent's worker call."""
        base = {}
        for name in compiled.topo_order:
            settings = compiled.graph.nodes[name]["settings"]
            base[name] = NodePlan(name, tuple(compiled.parents.get(name, ())),
                                  tuple(compiled.children.get(name, ())),
                                  settings.timeout_ms / 1000.0, settings.retry_attempts)
        nodes = {}
        for name, node in base.items():
            tail = []
            while name not in fused and len(node.children) == 1 and node.children[0] in fused:
                node = base[node.children[0]]
                tail.append(node)
            nodes[name] = replace(base[name], fused=tuple(tail),
                                  call_names=segment_names((base[name], *tail))) \
                if tail else base[name]
        return cls(compiled.start, tuple(compiled.leaves), nodes)


def segment_names(nodes) -> str:
    """The nodes of one worker call with their time limits, ``a:0.3,b:1``: the worker keeps
    each node's limit (handler/node_group.py); the frontend's timer is a safety net for a
    worker that does not answer at all (``fused_call_limit_s``)."""
    return ",".join(f"{node.name}:{node.timeout_s:g}" for node in nodes)


def _linear_chain(plan: Plan) -> tuple[NodePlan, ...] | None:
    """The nodes from start to the single leaf when the DAG is one path, else None."""
    order = []
    node = plan.nodes.get(plan.start)
    while node is not None and len(order) <= len(plan.nodes):
        if len(node.parents) > 1 or len(node.children) > 1:
            return None
        order.append(node)
        node = plan.nodes.get(node.children[0]) if node.children else None
    if len(order) != len(plan.nodes) or len(plan.leaves) != 1:
        return None
    return tuple(order)


def node_inputs(plan: NodePlan, request: Request, outputs: dict[str, Response]) -> list[Param]:
    if not plan.parents:
        return request.params
    if len(plan.parents) == 1:
        return [Param("body", None, outputs[plan.parents[0]].value)]
    return [Param(p, None, outputs[p].value) for p in plan.parents]


def final_response(plan: Plan, outputs: dict[str, Response]) -> Response:
    if len(plan.leaves) == 1:
        return outputs[plan.leaves[0]]
    return merged_response(plan.leaves, outputs)


def merged_response(leaves, outputs: dict[str, Response]) -> Response:
    """Several answering nodes: a JSON object by node name (TorchServe's leaf merge)."""
    merged = {}
    for leaf in leaves:
        raw = outputs[leaf].value
        try:
            merged[leaf] = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            merged[leaf] = raw.decode("utf-8", "replace")
    return Response("", 200, json.dumps(merged, indent=2).encode(), "application/json")


def _expire(future: asyncio.Future, expired: list, pool) -> None:
    if future.cancel():
        expired.append(True)
        pool.abandon(future)  # free the worker if it runs nothing else anybody waits for


def _cancelled_from_outside() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def call_node(plan: NodePlan, target, request: Request, params: list[Param],
                    may_stream: bool = False, item: int | None = None,
                    fused: tuple[NodePlan, ...] = (), targets: dict | None = None,
                    first_attempt: int = 0) -> Response:
    """One node, with its timeout per attempt and retries with backoff. A node whose handler
    streams is collected into one response, unless ``may_stream`` (it is the response
    node): then its stream is returned as it is produced. ``item``: which of a foreach
    node's items this is. When the request is traced (``tracing.current``), each attempt is
    recorded as a ``tracing.Attempt``.

    ``fused``: the nodes after this one that run in the same worker call (``targets`` holds
    theirs); the answer is the last one's, or, when one of them failed, that failure (with
    its trail: ``run_segment`` retries from there). ``first_attempt``: attempts already
    spent on this node."""
    loop = asyncio.get_running_loop()
    trace = tracing.current.get()
    last = "no attempt made"
    status = 500
    timeout_s = plan.timeout_s
    names = None
    if fused:
        timeout_s = fused_call_limit_s((plan, *fused))
        # a head's whole call is named once, at registration; a retry from a later node of
        # the call (which is never a head itself) names what is left
        names = plan.call_names or segment_names((plan, *fused))
    for attempt in range(first_attempt, plan.retries + 1):
        if attempt:
            target.stats.retried += 1
            await anyio.sleep(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
        probe = None if trace is None else \
            trace.attempt(plan.name, target, attempt + 1, params, item)
        expired: list = []
        timer = future = None
        started = loop.time()
        try:
            target.pool.check_can_serve()
            req = Request(request.id, params, request.headers)
            future = target.queue.submit(req, probe) if names is None else \
                target.queue.submit(req, probe, names)
            timer = loop.call_later(timeout_s, _expire, future, expired, target.pool)
            resp: Response = await future
            if resp.__class__ is not Response:  # a stream: its first chunk is out
                if may_stream:
                    target.stats.count(200, loop.time() - started)
                    if probe is not None:
                        probe.finish("ok", 200, "streams its results")
                    return resp
                timer.cancel()
                resp = await resp.collect()
        except asyncio.CancelledError:
            if not expired or _cancelled_from_outside():
                if future is not None and future.cancelled():  # a deadline, a failed sibling
                    target.pool.abandon(future)
                if probe is not None:
                    probe.finish("cancelled", 499, "the request ended first")
                raise
            last, status = f"timed out after {timeout_s * 1000:g} ms", 500
            target.stats.count(504, loop.time() - started)
            if probe is not None:
                probe.finish("timeout", 504, last)
            continue
        except DagserveError as exc:
            last, status = exc.message, exc.status
            target.stats.count(exc.status, loop.time() - started)
            if probe is not None:
                probe.finish("rejected", exc.status, last)
            continue
        finally:
            if timer is not None:
                timer.cancel()
        if resp.trail is not None and len(resp.trail) > 3:  # this node and fused ones ran
            account_fused(resp, target, fused, targets, loop.time() - started, probe, trace)
            return resp
        target.stats.count(resp.code, loop.time() - started)  # every node has its metrics
        if resp.code < 400:
            if probe is not None:
                probe.finish("ok", resp.code, "", len(resp.value), resp.handler_s)
            return resp
        last = resp.message or resp.value.decode("utf-8", "replace") or f"status {resp.code}"
        if probe is not None:
            probe.finish(outcome_of(resp), resp.code, last, len(resp.value), resp.handler_s)
        if resp.code < 500:  # the node refused its input: retrying cannot help
            raise NodeFailed(plan.name, resp.code, last)
        status = 500
    raise NodeFailed(plan.name, status if status < 500 else 500, last)


async def run_segment(head: NodePlan, targets: dict, request: Request, params: list[Param],
                      may_stream: bool = False) -> Response:
    """``head`` and the nodes fused after it, in one worker call. When a node after the
    first fails, its input comes back: it is retried (its first attempt spent) from there,
    with the nodes after it, by its own retry rules."""
    nodes = (head, *head.fused)
    pos = first_attempt = 0
    while True:
        node = nodes[pos]
        resp = await call_node(node, targets[node.name], request, params, may_stream,
                               fused=nodes[pos + 1:], targets=targets,
                               first_attempt=first_attempt)
        trail = getattr(resp, "trail", None)
        if trail is None or resp.code < 400:
            return resp
        pos += len(trail) // 3 - 1
        failed = nodes[pos]
        message = resp.message or f"status {resp.code}"
        if resp.code < 500:
            raise NodeFailed(failed.name, resp.code, message)
        if failed.retries == 0:
            raise NodeFailed(failed.name, 500, message)
        params, first_attempt = [Param("body", None, resp.value)], 1


def _call(node: NodePlan, targets: dict, request: Request, params: list[Param],
          may_stream: bool):
    """One node, or a node and those fused after it."""
    if node.fused:
        return run_segment(node, targets, request, params, may_stream)
    return call_node(node, targets[node.name], request, params, may_stream)


async def run_chain(chain: tuple[NodePlan, ...], targets: dict, request: Request) -> Response:
    """A linear DAG in the calling task: each node gets the previous output as ``body``."""
    params = request.params
    last = chain[-1]
    index = 0
    while True:
        node = chain[index]
        resp = await _call(node, targets, request, params, node.end is last)
        if node.end is last:
            return resp
        index += 1 + len(node.fused)
        params = [Param("body", None, resp.value)]


async def run_plan(plan: Plan, targets: dict, request: Request) -> Response:
    """Run the DAG for one request; raises NodeFailed naming the first node that failed."""
    if plan.chain is not None:
        return await run_chain(plan.chain, targets, request)
    outputs: dict[str, Response] = {}
    waiting = {name: len(n.parents) for name, n in plan.nodes.items()}

    async def run_from(name: str) -> None:
        # Run this node, then its first ready child inline (a chain stays in one task);
        # other ready children get tasks of their own.
        while True:
            node = plan.nodes[name]
            end = node.end
            outputs[end.name] = await _call(node, targets, request,
                                            node_inputs(node, request, outputs),
                                            not end.children and len(plan.leaves) == 1)
            ready = []
            for child in end.children:
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
            if not ready:
                return
            for child in ready[1:]:
                tg.start_soon(run_from, child)
            name = ready[0]

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_from, plan.start)
    except BaseExceptionGroup as group:
        failed = group.subgroup(NodeFailed)
        if failed is not None:
            raise first_failure(failed) from None
        raise
    return final_response(plan, outputs)


def first_failure(group: BaseExceptionGroup) -> NodeFailed:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, NodeFailed)
    return exc
