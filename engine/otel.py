"""OpenTelemetry export of traces (optional: ``pip install 'dagserve[otel]'``).

Imported only when an OTLP endpoint is configured (``otel_exporter_otlp_endpoint`` in
config.properties, or ``OTEL_EXPORTER_OTLP_ENDPOINT``). Then every request is traced
(``tracing.Tracer.always``) and becomes one SERVER span, ``workflow <name>`` or
``model <name>``, continuing the W3C ``traceparent`` the client sent; its ``traceparent`` is
added to the request's headers, so workers and handlers (``context.get_trace_id()``) see it.
When the request ends, each node attempt of its trace becomes a child span with the
attempt's own start and end times and the attributes ``dagserve.node``, ``dagserve.model``,
``dagserve.model.version``, ``dagserve.batch_size``, ``dagserve.attempt``,
``dagserve.outcome`` (and the queue wait, worker id and handler time when known); a
skipped node is a zero-length span with outcome ``skipped``. Spans leave through the SDK's
``BatchSpanProcessor`` and OTLP/HTTP (protobuf) exporter, on the SDK's own thread.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .tracing import Attempt, NodeRecord, Trace

_PROPAGATED = ("traceparent", "tracestate")


def traces_url(endpoint: str) -> str:
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` is a base URL: traces go to ``<base>/v1/traces``."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


class OtelExporter:
    """Turns finished :class:`~dagserve.engine.tracing.Trace` objects into spans."""

    def __init__(self, endpoint: str | None = None, service_name: str = "dagserve",
                 span_processor: SpanProcessor | None = None):
        if span_processor is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            if not endpoint:
                raise ValueError("an OTLP endpoint or a span processor is needed")
            span_processor = BatchSpanProcessor(
                OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=5))
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(span_processor)
        self.tracer = self.provider.get_tracer("dagserve")
        self.propagator = TraceContextTextMapPropagator()

    def start(self, trace: Trace, headers: dict[str, str]) -> None:
        incoming = {k.lower(): v for k, v in headers.items() if k.lower() in _PROPAGATED}
        parent = self.propagator.extract(incoming) if incoming else Context()
        span = self.tracer.start_span(f"{trace.kind} {trace.target}", context=parent,
                                      kind=SpanKind.SERVER, start_time=time.time_ns(),
                                      attributes={"dagserve.kind": trace.kind,
                                                  "dagserve.target": trace.target,
                                                  "dagserve.request_id": trace.id})
        trace.span = span
        trace.otel_trace_id = format(span.get_span_context().trace_id, "032x")
        for key in [k for k in headers if k.lower() in _PROPAGATED]:
            del headers[key]
        self.propagator.inject(headers, context=set_span_in_context(span))

    def finish(self, trace: Trace) -> None:
        span = trace.span
        if span is None:
            return
        # perf_counter instants -> wall-clock nanoseconds, from the trace's start
        wall0, perf0 = trace.wall_start, trace.started

        def ns(instant: float) -> int:
            return int((wall0 + instant - perf0) * 1e9)

        parent = set_span_in_context(span)
        end = trace.ended if trace.ended is not None else time.perf_counter()
        for rec in trace.nodes.values():
            if rec.skipped:
                self._node_span(parent, rec, None, ns(end), ns(end))
            for att in rec.attempts:
                self._node_span(parent, rec, att, ns(att.started),
                                ns(att.ended if att.ended is not None else end))
        if trace.status is not None:
            span.set_attribute("http.response.status_code", trace.status)
            if trace.status >= 400:
                span.set_status(Status(StatusCode.ERROR, trace.error or None))
        if trace.failed_node:
            span.set_attribute("dagserve.failed_node", trace.failed_node)
        span.end(end_time=ns(end))

    def _node_span(self, parent: Context, rec: NodeRecord, att: Attempt | None,
                   start_ns: int, end_ns: int) -> None:
        attributes: dict[str, Any] = {"dagserve.node": rec.name,
                                      "dagserve.model": rec.model or "",
                                      "dagserve.model.version": rec.version or ""}
        if att is None:
            attributes.update({"dagserve.outcome": "skipped", "dagserve.attempt": 0,
                               "dagserve.skip_reason": rec.reason})
        else:
            attributes.update({"dagserve.attempt": att.number, "dagserve.outcome": att.outcome,
                               "dagserve.batch_size": att.batch_size or 0,
                               "dagserve.bytes_in": att.bytes_in,
                               "dagserve.bytes_out": att.bytes_out})
            if att.queue_wait_s is not None:
                attributes["dagserve.queue_wait_ms"] = att.queue_wait_s * 1e3
            if att.worker_id is not None:
                attributes["dagserve.worker_id"] = att.worker_id
            if att.worker_s is not None:
                attributes["dagserve.worker_ms"] = att.worker_s * 1e3
            if att.item is not None:
                attributes["dagserve.item"] = att.item
        child = self.tracer.start_span(f"node {rec.name}", context=parent,
                                       kind=SpanKind.INTERNAL, start_time=start_ns,
                                       attributes=attributes)
        if att is not None and att.outcome != "ok":
            child.set_status(Status(StatusCode.ERROR, att.message or att.outcome))
        child.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Flush what is queued (bounded by the exporter's timeout) and stop."""
        self.provider.shutdown()
