"""Per-request traces: what every node of one request did, attempt by attempt.

A request is traced when it asks (``X-Dagserve-Trace: 1`` or ``?trace=true``), when
OpenTelemetry export is on (every request, see ``otel.py``), and, in summary, when it fails.
The untraced path allocates nothing here: the frontend asks :meth:`Tracer.wanted` (a header
look-up and a look at the raw query string) and the scheduler reads :data:`current`, a
context variable that is ``None`` unless the request is traced.

Who fills a trace:

- the frontend (``Tracer.begin`` / ``Tracer.end``): request id, target, total, status;
- the scheduler's ``call_node`` (``Trace.attempt``): one :class:`Attempt` per try at a node,
  with bytes in/out and its outcome; ``Trace.skip`` for a node that did not run;
- the batch queue (``Attempt.dispatched``): queue wait, batch size, worker id;
- the worker: the handler's time for the batch, reported in its result frame and carried
  by the answer (``Response.handler_s``) to ``Attempt.finish``.

Traces are kept in a bounded ring (``trace_ring_size``) and served as JSON on the
management port (``GET /workflows/{w}/traces/{id}``, ``GET /models/{m}/traces/{id}``).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any, Iterable
from urllib.parse import parse_qsl

TRACE_HEADER = "X-Dagserve-Trace"
TRACE_ID_HEADER = "X-Dagserve-Trace-Id"
DEFAULT_RING_SIZE = 200
_TRUE = frozenset({"1", "true", "yes", "on"})

current: ContextVar["Trace | None"] = ContextVar("dagserve_trace", default=None)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


class Attempt:
    """One try at one node: submitted to the node's queue, then answered or not."""

    __slots__ = ("node", "target", "number", "started", "ended", "queue_wait_s",
                 "batch_size", "worker_id", "worker_s", "outcome", "code", "message",
                 "bytes_in", "bytes_out", "item")

    def __init__(self, node: str, target: Any, number: int, started: float, bytes_in: int,
                 item: int | None = None):
        self.node = node
        self.target = target  # the model version that serves the node
        self.number = number
        self.started = started
        self.ended: float | None = None
        self.queue_wait_s: float | None = None
        self.batch_size: int | None = None
        self.worker_id: str | None = None
        self.worker_s: float | None = None
        self.outcome = "running"
        self.code: int | None = None
        self.message = ""
        self.bytes_in = bytes_in
        self.bytes_out = 0
        self.item = item

    # called by the batch queue and the worker process
    def dispatched(self, queue_wait_s: float, batch_size: int, worker_id: str) -> None:
        self.queue_wait_s = queue_wait_s
        self.batch_size = batch_size
        self.worker_id = worker_id

    def finish(self, outcome: str, code: int, message: str = "", bytes_out: int = 0,
               worker_s: float | None = None) -> None:
        """``outcome``: ok, error (the node answered 4xx/5xx), timeout, rejected (no worker,
        queue full), cancelled (the request ended first); ``worker_s``: the handler's time
        for the batch, as the worker reported it with the answer."""
        if worker_s is not None:
            self.worker_s = worker_s
        self.ended = time.perf_counter()
        self.outcome = outcome
        self.code = code
        self.message = message
        self.bytes_out = bytes_out

    def to_json(self, origin: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attempt": self.number, "outcome": self.outcome, "code": self.code,
            "startMs": _ms(self.started - origin),
            "durationMs": _ms(None if self.ended is None else self.ended - self.started),
            "queueWaitMs": _ms(self.queue_wait_s), "batchSize": self.batch_size,
            "workerId": self.worker_id, "workerMs": _ms(self.worker_s),
            "bytesIn": self.bytes_in, "bytesOut": self.bytes_out}
        if self.message:
            out["message"] = self.message
        if self.item is not None:
            out["item"] = self.item
        return out


class NodeRecord:
    """A node of the request: its attempts, or why it did not run."""

    __slots__ = ("name", "model", "version", "attempts", "skipped", "reason")

    def __init__(self, name: str, model: str | None, version: str | None):
        self.name = name
        self.model = model
        self.version = version
        self.attempts: list[Attempt] = []
        self.skipped = False
        self.reason = ""

    @property
    def status(self) -> str:
        """ran | failed | skipped | cancelled | not run"""
        if self.skipped:
            return "skipped"
        if not self.attempts:
            return "not run"
        last = self.attempts[-1].outcome
        if last == "ok":
            return "ran"
        return "cancelled" if last in ("cancelled", "running") else "failed"

    def to_json(self, origin: float) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.name, "status": self.status, "model": self.model,
                               "version": self.version}
        if self.reason:
            out["reason"] = self.reason
        out["attempts"] = [a.to_json(origin) for a in self.attempts]
        ran = [a for a in self.attempts if a.ended is not None]
        if ran:
            out["startMs"] = _ms(self.attempts[0].started - origin)
            out["endMs"] = _ms(ran[-1].ended - origin)
        return out


class Trace:
    """One request: ``kind`` is "workflow" or "model", ``target`` its name.

    While the request runs, a trace only appends: one :class:`Attempt` per try at a node,
    a reason per skipped node. :attr:`nodes` (one :class:`NodeRecord` per node, in the DAG's
    order) is built when the trace is read."""

    __slots__ = ("id", "kind", "target", "keep", "wall_start", "started", "ended", "status",
                 "error", "failed_node", "attempts", "skips", "order", "targets",
                 "version", "otel_trace_id", "span")

    def __init__(self, trace_id: str, kind: str, target: str, nodes: Iterable[str] = (),
                 keep: bool = True):
        self.id = trace_id
        self.kind = kind
        self.target = target
        self.keep = keep  # asked for (or failed): goes to the ring
        self.wall_start = time.time()
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.status: int | None = None
        self.error = ""
        self.failed_node: str | None = None
        self.attempts: list[Attempt] = []
        self.skips: dict[str, tuple[str, Any]] = {}  # node -> (reason, model version)
        self.order: Iterable[str] = nodes  # the nodes to list even if never reached
        self.targets: dict[str, Any] = {}  # node -> model version, for those never reached
        self.version: str | None = None  # the workflow version the request ran
        self.otel_trace_id: str | None = None
        self.span: Any = None  # the OpenTelemetry request span, when exporting

    def expect(self, order: Iterable[str], targets: dict[str, Any],
               version: str | None = None) -> None:
        """The DAG's nodes, in this order, and their model versions: listed even if some
        never run (read only when the trace is shown: the request pays for references);
        ``version``: the workflow version that runs."""
        self.order = order
        self.targets = targets
        self.version = version

    def attempt(self, node: str, target: Any, number: int, params: Iterable[Any] = (),
                item: int | None = None) -> Attempt:
        """Start attempt ``number`` (1-based) of ``node`` (served by model version
        ``target``); ``params`` are its inputs (their bytes are counted)."""
        size = 0
        for p in params:
            size += len(p.value)
        att = Attempt(node, target, number, time.perf_counter(), size, item)
        self.attempts.append(att)
        return att

    def skip(self, node: str, reason: str, target: Any = None) -> None:
        self.skips[node] = (reason, target)

    def finish(self, status: int, error: str = "", failed_node: str | None = None) -> None:
        self.ended = time.perf_counter()
        self.status = status
        self.error = error
        self.failed_node = failed_node

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        """Every node: the expected ones in order, then any other that ran or was skipped."""
        records: dict[str, NodeRecord] = {}

        def record(name: str, target: Any) -> NodeRecord:
            rec = records.get(name)
            if rec is None:
                rec = records[name] = NodeRecord(name, None, None)
            if target is not None and rec.model is None:
                rec.model = getattr(target, "name", None)
                rec.version = getattr(target, "version", None)
            return rec

        for name in self.order:
            record(name, self.targets.get(name))
        for att in self.attempts:
            record(att.node, att.target).attempts.append(att)
        for name, (reason, target) in self.skips.items():
            rec = record(name, target)
            rec.skipped, rec.reason = True, reason
        if self.failed_node:
            rec = record(self.failed_node, None)
            rec.reason = rec.reason or self.error
        return records

    @property
    def total_s(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "traceId": self.id, "kind": self.kind, "target": self.target,
            **({"version": self.version} if self.version is not None else {}),
            "start": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.wall_start))
                     + f".{int(self.wall_start % 1 * 1000):03d}Z",
            "totalMs": _ms(self.total_s), "status": self.status}
        if self.error:
            out["error"] = self.error
        if self.failed_node:
            out["failedNode"] = self.failed_node
        if self.otel_trace_id:
            out["otelTraceId"] = self.otel_trace_id
        out["nodes"] = [rec.to_json(self.started) for rec in self.nodes.values()]
        return out

    def summary(self) -> dict[str, Any]:
        """One line of the recent-traces list."""
        return {"traceId": self.id, "start": self.wall_start, "totalMs": _ms(self.total_s),
                "status": self.status, "failedNode": self.failed_node}


class TraceRing:
    """The last ``size`` kept traces, by id."""

    def __init__(self, size: int = DEFAULT_RING_SIZE):
        self.size = max(0, size)
        self._traces: dict[str, Trace] = {}  # oldest first (ids are unique)

    def add(self, trace: Trace) -> None:
        if self.size == 0:
            return
        traces = self._traces
        traces.pop(trace.id, None)
        traces[trace.id] = trace
        if len(traces) > self.size:
            del traces[next(iter(traces))]

    def get(self, kind: str, target: str, trace_id: str) -> Trace | None:
        trace = self._traces.get(trace_id)
        if trace is None or trace.kind != kind or trace.target != target:
            return None
        return trace

    def recent(self, kind: str, target: str, limit: int = 20) -> list[Trace]:
        found = []
        for trace in reversed(self._traces.values()):
            if trace.kind == kind and trace.target == target:
                found.append(trace)
                if len(found) >= limit:
                    break
        return found

    def __len__(self) -> int:
        return len(self._traces)


def asked_for(headers: Any, query_string: str) -> bool:
    """The request asks to be traced: ``X-Dagserve-Trace: 1`` or ``?trace=true``."""
    value = headers.get(TRACE_HEADER)
    if value is not None and value.strip().lower() in _TRUE:
        return True
    if query_string and "trace" in query_string:
        return any(k == "trace" and v.strip().lower() in _TRUE
                   for k, v in parse_qsl(query_string, keep_blank_values=True))
    return False


class Tracer:
    """Starts and ends traces, keeps the ring, and hands finished traces to the exporter
    (``otel.OtelExporter``) when there is one."""

    def __init__(self, ring_size: int = DEFAULT_RING_SIZE, exporter: Any = None):
        self.ring = TraceRing(ring_size)
        self.exporter = exporter
        self.always = exporter is not None  # every request is a span

    def wanted(self, headers: Any, query_string: str) -> bool:
        if self.always:
            return True
        if TRACE_HEADER not in headers and "trace" not in query_string:
            return False  # the common case, decided with two look-ups
        return asked_for(headers, query_string)

    def keeps(self, headers: Any, query_string: str) -> bool:
        """Whether the trace of a request the tracer follows goes to the ring: always when
        it asked; when every request is exported, only those that asked (and failures)."""
        return not self.always or asked_for(headers, query_string)

    def begin(self, kind: str, target: str, request: Any, nodes: Iterable[str] = (),
              keep: bool = True) -> Trace:
        """A trace for ``request`` (a messages.Request: its id becomes the trace id; with
        an exporter, the W3C ``traceparent`` of the request span is added to its headers,
        so a handler can read it)."""
        trace = Trace(request.id, kind, target, nodes, keep)
        if self.exporter is not None:
            self.exporter.start(trace, request.headers)
        return trace

    def end(self, trace: Trace, status: int, error: str = "",
            failed_node: str | None = None) -> None:
        trace.finish(status, error, failed_node)
        if trace.keep or status >= 400:
            self.ring.add(trace)
        if self.exporter is not None:
            self.exporter.finish(trace)

    def failed(self, kind: str, target: str, request_id: str, started: float, status: int,
               error: str, failed_node: str | None = None,
               nodes: Iterable[str] = ()) -> Trace:
        """An untraced request failed: keep what is known (which node, why, how long)."""
        trace = Trace(request_id, kind, target, nodes)
        trace.started = started
        trace.wall_start = time.time() - (time.perf_counter() - started)
        trace.finish(status, error, failed_node)
        self.ring.add(trace)
        return trace

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.shutdown()


def tracer_for(cfg: Any) -> Tracer:
    """The server's tracer: its ring sized by ``trace_ring_size``; OpenTelemetry export
    when ``otel_exporter_otlp_endpoint`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT``) is set, and
    only then is the SDK imported."""
    exporter = None
    if cfg.otel_exporter_otlp_endpoint:
        try:
            from .otel import OtelExporter
        except ImportError as exc:
            from .errors import ConfigError

            raise ConfigError(f"otel_exporter_otlp_endpoint is set but OpenTelemetry is not "
                              f"installed ({exc}); pip install 'dagserve[otel]'") from None
        exporter = OtelExporter(cfg.otel_exporter_otlp_endpoint, cfg.otel_service_name)
    return Tracer(cfg.trace_ring_size, exporter)


def note_skipped(node: str, target: Any, reason: str) -> None:
    """A workflow node did not run (its ``when`` was false, all its parents were skipped, it
    failed with ``on-error: skip``; the general scheduler, ``flow.py``, says which): count
    it in the node's metrics and, when the request is traced, record it with its reason."""
    if target is not None:
        target.stats.skipped += 1
    trace = current.get()
    if trace is not None:
        trace.skip(node, reason, target)
