"""The general scheduler, for specs that use WORKFLOW-SPEC.md's keys: ``when``, ``foreach``,
``inputs``, ``on-error`` and deadlines. TorchServe specs never come here: they keep
``scheduler.run_plan``'s fast paths.

A node starts once all its parents are done (ran or skipped). It is skipped, without
reaching a worker, when all its parents were skipped or its ``when`` is falsy. A ``foreach``
node submits one job per item to its queue at once (so the items batch together, and with
concurrent requests). ``on-error`` applies to the node's own failure after its retries, not
to its input being unusable (a non-JSON output under an expression, too many items): those
are the request's fault and a 4xx naming the node. The response is made of the nodes that
ran and none of whose children ran. A deadline cancels everything still running for the
request and answers 504 naming those nodes.

What happened to each node is kept in one :class:`RunRecord` per request.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import anyio

from .errors import BadRequestError, DagserveError
from .tracing import note_skipped
from .messages import Param, Request, Response
from .scheduler import NodeFailed, NodePlan, Plan, call_node, first_failure, merged_response

TIMEOUT_HEADERS = ("X-Request-Timeout-Ms", "x-request-timeout-ms")
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


class DeadlineExceededError(DagserveError):
    status = 504
    type_name = "DeadlineExceededException"


class NodeInputError(NodeFailed):
    """A node's input cannot be used as its spec says (not JSON, not a list, too many
    items): a client error, never retried, not covered by ``on-error``."""

    def __init__(self, node: str, reason: str):
        super().__init__(node, 400, reason)


@dataclass
class RunRecord:
    """What happened to each node of one request: ran, skipped (why), failed (why), and which
    are running right now (named by a deadline error)."""

    ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {"ran": list(self.ran), "skipped": dict(self.skipped),
                "failed": dict(self.failed), "running": sorted(self.running)}


@dataclass
class FlowPlan:
    """A Plan plus each node's compiled ``nodes:`` entry and the spec's deadline."""

    plan: Plan
    flows: dict[str, Any]  # node -> dagserve.workflows.NodeFlow
    order: tuple[str, ...]  # topological, for the response's order
    deadline_ms: int | None

    @classmethod
    def from_compiled(cls, compiled, plan: Plan) -> "FlowPlan":
        return cls(plan, dict(compiled.flows), tuple(compiled.topo_order), compiled.deadline_ms)


def request_deadline_ms(headers: dict[str, str], spec_ms: int | None) -> int | None:
    """The spec's ``deadline-ms``, lowered (never raised) by ``X-Request-Timeout-Ms``."""
    raw = headers.get(TIMEOUT_HEADERS[0]) or headers.get(TIMEOUT_HEADERS[1])
    if raw is None:
        return spec_ms
    try:
        asked = int(raw)
    except ValueError:
        asked = 0
    if asked < 1:
        raise BadRequestError(f"Header X-Request-Timeout-Ms must be a positive integer "
                              f"(milliseconds), got {raw!r}")
    return asked if spec_ms is None else min(asked, spec_ms)


async def run_flow(flow: FlowPlan, targets: dict, request: Request,
                   deadline_ms: int | None = None, record: RunRecord | None = None) -> Response:
    """Run one request; raises NodeFailed (first node that failed for good) or
    DeadlineExceededError."""
    run = _FlowRun(flow, targets, request, record if record is not None else RunRecord())
    if deadline_ms is None:
        return await run.run()
    with anyio.move_on_after(deadline_ms / 1000.0) as scope:
        return await run.run()
    assert scope.cancelled_caught
    running = ", ".join(sorted(run.record.running)) or "none"
    raise DeadlineExceededError(f"Workflow deadline of {deadline_ms} ms exceeded; nodes "
                                f"still running: {running}")


def request_param(request: Request) -> Param:
    """The request as sent: a raw body, else the ``data`` field, else the first field."""
    for param in request.params:
        if param.name in ("body", "data"):
            return param
    return request.params[0] if request.params else Param("body", None, b"")


def item_param(item: Any) -> Param:
    """A foreach item as a job's body: a string as UTF-8 text, anything else as its JSON;
    typed, so a handler gets a str or the parsed value as TorchServe decodes a request."""
    if isinstance(item, str):
        return Param("body", TEXT, item.encode())
    return Param("body", JSON, json.dumps(item).encode())


def _as_json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


class _FlowRun:
    """The state of one request through a FlowPlan."""

    def __init__(self, flow: FlowPlan, targets: dict, request: Request, record: RunRecord):
        self.flow = flow
        self.nodes = flow.plan.nodes
        self.targets = targets
        self.request = request
        self.record = record
        self.outputs: dict[str, Response] = {}
        self._parsed: dict[str, Any] = {}

    async def run(self) -> Response:
        plan = self.flow.plan
        if plan.chain is not None:  # one path: no task group, as the fast path
            for node in plan.chain:
                if not self.skipped(node):
                    await self.execute(node)
            return self.answer()
        self.waiting = {name: len(n.parents) for name, n in self.nodes.items()}
        await self.execute(self.nodes[plan.start])
        forks = await self.run_from(plan.start, None)
        if forks:  # several nodes to run at once: only now is a task group worth its cost
            try:
                async with anyio.create_task_group() as tg:
                    for name in forks:
                        tg.start_soon(self.run_from_new, name, tg)
            except BaseExceptionGroup as group:
                failed = group.subgroup(NodeFailed)
                if failed is not None:
                    raise first_failure(failed) from None
                raise
        return self.answer()

    async def run_from_new(self, name: str, tg) -> None:
        await self.execute(self.nodes[name])
        await self.run_from(name, tg)

    async def run_from(self, name: str, tg) -> list[str]:
        """After ``name`` ran: run its one runnable child in this task, and so on. Where
        several become runnable, start the others in ``tg``; without a task group yet,
        return them all (the caller makes one)."""
        while True:
            runnable = self.release_children(name)
            if not runnable:
                return []
            if len(runnable) > 1 and tg is None:
                return runnable
            for child in runnable[1:]:
                tg.start_soon(self.run_from_new, child, tg)
            name = runnable[0]
            await self.execute(self.nodes[name])

    def release_children(self, name: str) -> list[str]:
        """Children of ``name`` whose parents are all done and that will run; those that
        are skipped are decided here, at once, and release their own children."""
        runnable = []
        for child in self.nodes[name].children:
            self.waiting[child] -= 1
            if self.waiting[child] == 0:
                if self.skipped(self.nodes[child]):
                    runnable += self.release_children(child)
                else:
                    runnable.append(child)
        return runnable

    def answer(self) -> Response:
        """The nodes that ran and none of whose children ran: one as it is, several merged."""
        outputs = self.outputs
        answer = [n for n in self.flow.order if n in outputs
                  and not any(c in outputs for c in self.nodes[n].children)]
        if len(answer) == 1:
            return outputs[answer[0]]
        return merged_response(answer, outputs)

    # -- one node ------------------------------------------------------------------------

    def skipped(self, node: NodePlan) -> bool:
        """Decide (once its parents are done) whether ``node`` is skipped, and record why."""
        ran = [p for p in node.parents if p in self.outputs]
        if node.parents and not ran:
            self.skip(node.name, "all its parents were skipped")
            return True
        flow = self.flow.flows.get(node.name)
        if flow is not None and flow.when is not None \
                and not flow.when.test(self.input_json(node, ran, "when")):
            self.skip(node.name, f"when {flow.when.text!r} was false")
            return True
        return False

    def skip(self, name: str, reason: str) -> None:
        """Record a skipped node (and count it in its metrics and the request's trace)."""
        self.record.skipped[name] = reason
        note_skipped(name, self.targets.get(name), reason)

    async def execute(self, node: NodePlan) -> None:
        """Run a node that is not skipped: its foreach or its one call, then on-error."""
        name = node.name
        ran = [p for p in node.parents if p in self.outputs]
        flow = self.flow.flows.get(name)
        self.record.running.add(name)
        stopped = False
        try:
            if flow is not None and flow.foreach is not None:
                resp = await self.run_foreach(node, flow, self.input_json(node, ran, "foreach"))
            else:
                resp = await call_node(node, self.targets[name], self.request,
                                       self.params(node, ran, flow))
        except NodeInputError as exc:
            self.record.failed[name] = exc.reason
            raise
        except NodeFailed as exc:
            if flow is None or flow.on_error == "fail":
                self.record.failed[name] = exc.reason
                raise
            if flow.on_error == "skip":
                self.skip(name, f"failed ({exc.reason}); on-error: skip")
                return
            self.record.failed[name] = exc.reason
            resp = Response(self.request.id, 200, json.dumps(flow.default).encode(), JSON)
        except anyio.get_cancelled_exc_class():
            stopped = True  # the request was stopped (deadline) while this node ran
            raise
        finally:
            if not stopped:
                self.record.running.discard(name)
        self.outputs[name] = resp
        self.record.ran.append(name)

    def parsed(self, source: str, node: str, key: str) -> Any:
        """An output (or ``$request``) as JSON, for an expression; parsed once per request."""
        if source in self._parsed:
            return self._parsed[source]
        raw = request_param(self.request).value if source == "$request" \
            else self.outputs[source].value
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            what = "the request" if source == "$request" else f"the output of '{source}'"
            raise NodeInputError(node, f"'{key}' needs JSON, but {what} is not JSON "
                                       f"(starts {bytes(raw[:40])!r})") from None
        self._parsed[source] = value
        return value

    def input_json(self, node: NodePlan, ran: list[str], key: str) -> Any:
        """The node's input for an expression: one parent's output, or {parent: output}."""
        if len(node.parents) == 1:
            return self.parsed(node.parents[0], node.name, key)
        return {p: self.parsed(p, node.name, key) for p in ran}

    def params(self, node: NodePlan, ran: list[str], flow) -> list[Param]:
        if flow is not None and flow.inputs:
            return [param for entry in flow.inputs
                    if (param := self.entry_param(node.name, entry)) is not None]
        if not node.parents:
            return self.request.params
        if len(node.parents) == 1:
            return [Param("body", None, self.outputs[node.parents[0]].value)]
        return [Param(p, None, self.outputs[p].value) for p in ran]

    def entry_param(self, node: str, entry) -> Param | None:
        """One ``inputs`` entry: the request as sent (with its content type), an ancestor's
        bytes, or the JSON of a selection; None when its source node was skipped."""
        if entry.source != "$request" and entry.source not in self.outputs:
            return None
        if entry.select is not None:
            selected = entry.select.search(self.parsed(entry.source, node, "select"))
            return Param(entry.name, JSON, json.dumps(selected).encode())
        if entry.source == "$request":
            sent = request_param(self.request)
            return Param(entry.name, sent.content_type, sent.value)
        return Param(entry.name, None, self.outputs[entry.source].value)

    async def run_foreach(self, node: NodePlan, flow, value: Any) -> Response:
        items = flow.foreach.search(value)
        if items is None:
            items = []
        if not isinstance(items, list):
            raise NodeInputError(node.name, f"foreach {flow.foreach.text!r} gave "
                                            f"{type(items).__name__}, not a list")
        if len(items) > flow.max_items:
            raise NodeInputError(node.name, f"foreach {flow.foreach.text!r} gave "
                                            f"{len(items)} items, more than max-items "
                                            f"({flow.max_items})")
        results: list[Any] = [None] * len(items)
        target = self.targets[node.name]

        # never more items in the queue at once than it holds (job_queue_size): the rest
        # follow as earlier ones finish, still batching with what is queued
        room = asyncio.Semaphore(max(1, min(len(items), target.queue.capacity)))

        async def one(index: int, item: Any) -> None:
            async with room:
                resp = await call_node(node, target, self.request, [item_param(item)],
                                       item=index)
            results[index] = _as_json_or_text(resp.value)

        if items:
            # every item is submitted before the queue's next pump, so they batch together;
            # plain tasks (cheaper than a task group's), all cancelled if one fails for good
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(one(index, item)) for index, item in enumerate(items)]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
        return Response(self.request.id, 200, json.dumps(results).encode(), JSON)
