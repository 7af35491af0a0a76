"""Several nodes of one workflow in one worker process (engine/node_groups.py).

A workflow's function nodes whose worker settings are the same (batch size, batch delay,
workers) share one worker, and so do its model nodes with ``workflow: share-workers: true``:
it imports the workflow's handler file once, loads each model from its own unpacked archive,
and keeps one :class:`~.service.Service` per node, each with its own context (model name
``<workflow>__<node>``, as TorchServe names a node's model; a model's own directory,
manifest and model config). Every request names the node to run (``Request.nodes``, which
the frontend sets; handlers never see it).

It may name several nodes, ``a:0.3,b:1,c:0.3`` (each with its ``timeout-ms`` in
seconds): consecutive nodes of a chain (each the only child of the one before) run in this one
call, each getting the previous node's output as ``body``, as the scheduler would pass it,
but without a round trip through the frontend per node. Each node's time limit is kept here
(a timer signal interrupts the handler, as the frontend's interrupt would), so a node that
runs too long fails as timed out under its own name. The answer then carries a trail,
``code, microseconds, bytes out`` for each node that ran (one flat list of integers: cheap
to encode and decode in every answer),
which the frontend turns into each node's metrics and trace. A node that fails ends the
request's run there: its error is the answer, and when it was not the first node the answer's
body is that node's input, so the frontend can retry the node (and the rest) with it.

Requests of one batch that name different nodes are served node by node: a batch of ``a``
requests and ``b`` requests is one call of ``a``'s handler and one of ``b``'s.
"""

from __future__ import annotations

import signal
import time
from types import SimpleNamespace
from typing import Callable

from ..messages import Param, Request, Response
from .service import Service


class NodeTimedOut(BaseException):
    """A node of a fused call ran past its own time limit (a BaseException, so a handler's
    ``except Exception`` cannot swallow it)."""


class _NodeTimer:
    """The time limit of the node running now, kept by a real-time timer signal.

    Arming the timer is a system call, a few microseconds on this kind of machine: as much
    as a quick node itself. So it is armed only when it would not fire before the running
    node's deadline anyway; when it fires early (it was armed for an earlier node), it is
    armed again for what is left, and when no timed node runs it does nothing. In a steady
    stream of quick nodes with the same limit that is about one system call per limit,
    not two per node."""

    def __init__(self) -> None:
        self.timing = False  # a node with a limit runs now
        self.deadline = 0.0  # its deadline (time.monotonic())
        self._fires_at = 0.0  # when the armed timer fires; 0: not armed
        try:
            signal.signal(signal.SIGALRM, self._on_alarm)
            self.available = True
        except ValueError:  # not the main thread (a Ray actor): the frontend's limit only
            self.available = False

    def _set(self, seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        self._fires_at = time.monotonic() + seconds

    def _on_alarm(self, signum, frame) -> None:
        self._fires_at = 0.0
        if not self.timing:
            return
        remaining = self.deadline - time.monotonic()
        if remaining > 0:
            self._set(remaining)
            return
        self.timing = False
        raise NodeTimedOut()

    def arm(self, seconds: float) -> None:
        now = time.monotonic()
        self.deadline = now + seconds
        if not now < self._fires_at <= self.deadline:
            self._set(seconds)
        self.timing = True


class NodeGroupService:
    """Serves batches for several nodes (``services``: node name -> its Service)."""

    def __init__(self, services: dict[str, Service]):
        if not services:
            raise ValueError("a node group needs at least one node")
        self.services = services
        self.first = next(iter(services))  # a request that names no node (never sent)
        self._timer = _NodeTimer()
        # The worker's serve loop sets ``context.intermediate_sender`` here (not on a node's
        # context: a node that is not last in a call gets a collector instead); each node's
        # own context gets the sender, or a collector, before it runs.
        self.context = SimpleNamespace(intermediate_sender=None)

    def predict(self, requests: list[Request]) -> tuple[list[Response], list[dict]]:
        segments: dict[str, list[int]] = {}
        for index, req in enumerate(requests):
            names = req.nodes or self.first
            segments.setdefault(names, []).append(index)
        out: list[Response | None] = [None] * len(requests)
        metrics: list[dict] = []
        for names, indexes in segments.items():
            steps = [_step(part) for part in names.split(",")]
            unknown = [n for n, _ in steps if n not in self.services]
            if unknown:
                message = f"no node {', '.join(unknown)} in this worker"
                for i in indexes:
                    out[i] = Response(requests[i].id, 500, b"", None, {}, message)
                continue
            answers = self._run(steps, [requests[i] for i in indexes], metrics)
            for i, resp in zip(indexes, answers):
                out[i] = resp
        return out, metrics  # type: ignore[return-value]

    def _run(self, nodes: list[tuple[str, float | None]], requests: list[Request],
             metrics: list[dict]) -> list[Response]:
        """One segment for a batch of requests: node after node, each on those still going."""
        answers: list[Response | None] = [None] * len(requests)
        trails: list[list] = [[] for _ in requests]
        live = list(range(len(requests)))
        inputs = requests
        sender = self.context.intermediate_sender
        last = len(nodes) - 1
        for pos, (node, limit_s) in enumerate(nodes):
            service = self.services[node]
            streamed: dict[str, list[bytes]] = {}
            service.context.intermediate_sender = sender if pos == last else \
                _collector(streamed)
            started = time.perf_counter()
            responses, node_metrics = self._predict(service, inputs, limit_s)
            micros = int((time.perf_counter() - started) * 1e6)
            metrics.extend(node_metrics)
            going: list[int] = []
            next_inputs: list[Request] = []
            for index, req, resp in zip(live, inputs, responses):
                if streamed and resp.code < 400 and req.id in streamed:
                    resp.value = b"".join(streamed[req.id]) + resp.value  # as collected
                trails[index] += (resp.code, micros, len(resp.value))
                if resp.code >= 400 or pos == last:
                    if resp.code >= 400 and pos > 0:
                        resp.value = req.params[0].value  # the failed node's input
                    if len(nodes) > 1:
                        resp.trail = trails[index]
                    answers[index] = resp
                else:
                    going.append(index)
                    next_inputs.append(Request(req.id, [Param("body", None, resp.value)],
                                               req.headers, None))
            live, inputs = going, next_inputs
            if not live:
                break
        return answers  # type: ignore[return-value]

    def _predict(self, service: Service, requests: list[Request],
                 limit_s: float | None) -> tuple[list[Response], list[dict]]:
        timer = self._timer
        if limit_s is None or not timer.available:
            return service.predict(requests)
        try:
            timer.arm(limit_s)
            try:
                return service.predict(requests)
            finally:
                timer.timing = False
        except NodeTimedOut:
            return service._fail(requests, 504, f"timed out after {limit_s * 1000:g} ms")


def _step(part: str) -> tuple[str, float | None]:
    """``node`` or ``node:seconds``."""
    node, _, limit = part.partition(":")
    try:
        return node, float(limit) if limit else None
    except ValueError:
        return node, None


def _collector(streamed: dict[str, list[bytes]]) -> Callable[[list[Response]], None]:
    """Intermediate results of a node that is not the last of its segment: kept, and put in
    front of its output (what the frontend does when it collects a node's stream)."""

    def collect(responses: list[Response]) -> None:
        for resp in responses:
            if resp.code < 400:
                streamed.setdefault(resp.id, []).append(resp.value)

    return collect


__all__ = ["NodeGroupService"]
