"""OpenTelemetry: traces turned into spans (the SDK's in-memory exporter), and one export
end to end from the real server to an OTLP/HTTP receiver run here on 127.0.0.1, its protobuf
bodies decoded with opentelemetry-proto."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest
import requests

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dagserve.engine.messages import Param, Request
from dagserve.engine.otel import OtelExporter, traces_url
from dagserve.engine.tracing import Tracer
from server_utils import ECHO_HANDLER, build_mar, build_war, free_port, start_server, wait_until

PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"


def in_memory_tracer():
    spans = InMemorySpanExporter()
    return Tracer(10, OtelExporter(span_processor=SimpleSpanProcessor(spans))), spans


class FakeModel:
    name, version = "wf__classify", "1.0"


def test_request_span_with_one_child_per_attempt_and_skips():
    tracer, spans = in_memory_tracer()
    request = Request("req-1", [Param("body", None, b"12345")], {"traceparent": TRACEPARENT})
    trace = tracer.begin("workflow", "wf", request)
    # the request's headers now carry the request span's own traceparent for the workers
    assert request.headers["traceparent"].split("-")[1] == PARENT_TRACE
    assert request.headers["traceparent"].split("-")[2] != PARENT_SPAN
    first = trace.attempt("classify", FakeModel(), 1, request.params)
    first.dispatched(0.001, 4, "9001")
    first.finish("timeout", 504, "timed out after 100 ms")
    second = trace.attempt("classify", FakeModel(), 2, request.params)
    second.dispatched(0.0005, 2, "9002")
    second.finish("ok", 200, "", 7, worker_s=0.003)
    trace.skip("fallback", "condition is false")
    tracer.end(trace, 200)
    finished = {(s.name, s.attributes.get("dagserve.attempt")): s
                for s in spans.get_finished_spans()}
    root = finished[("workflow wf", None)]
    assert format(root.context.trace_id, "032x") == PARENT_TRACE
    assert format(root.parent.span_id, "016x") == PARENT_SPAN
    assert root.attributes["http.response.status_code"] == 200
    one, two = finished[("node classify", 1)], finished[("node classify", 2)]
    for span in (one, two):
        assert span.parent.span_id == root.context.span_id
        assert span.attributes["dagserve.node"] == "classify"
        assert span.attributes["dagserve.model"] == "wf__classify"
        assert span.attributes["dagserve.model.version"] == "1.0"
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
    assert (one.attributes["dagserve.outcome"], one.attributes["dagserve.batch_size"]) == \
        ("timeout", 4)
    assert not one.status.is_ok
    assert (two.attributes["dagserve.outcome"], two.attributes["dagserve.batch_size"]) == \
        ("ok", 2)
    assert two.attributes["dagserve.worker_id"] == "9002"
    skipped = finished[("node fallback", 0)]
    assert skipped.attributes["dagserve.outcome"] == "skipped"
    assert skipped.attributes["dagserve.skip_reason"] == "condition is false"
    assert trace.otel_trace_id == PARENT_TRACE
    # exported or not, a trace that was not asked for stays out of the ring
    assert len(tracer.ring) == 1


def test_without_traceparent_a_new_trace_starts():
    tracer, spans = in_memory_tracer()
    request = Request("req-2", [], {})
    trace = tracer.begin("model", "m", request, keep=False)
    tracer.end(trace, 500, "boom", "m")
    [span] = spans.get_finished_spans()
    assert span.parent is None and not span.status.is_ok
    assert request.headers["traceparent"].split("-")[1] == trace.otel_trace_id
    assert tracer.ring.get("model", "m", "req-2") is trace  # failed: always kept


def test_endpoint_is_a_base_url():
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://h:1/v1/traces") == "http://h:1/v1/traces"


# -- end to end ---------------------------------------------------------------------------

class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: POST /v1/traces (protobuf) bodies."""

    def __init__(self):
        self.port = free_port()
        self.requests: list[ExportTraceServiceRequest] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from aiohttp import web

        async def traces(request):
            msg = ExportTraceServiceRequest()
            msg.ParseFromString(await request.read())
            self.requests.append(msg)
            return web.Response(body=b"", content_type="application/x-protobuf")

        async def serve():
            app = web.Application()
            app.router.add_post("/v1/traces", traces)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._started.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    def __enter__(self):
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def spans(self):
        return [span for req in self.requests for rs in req.resource_spans
                for ss in rs.scope_spans for span in ss.spans]


TRACE_ID_HANDLER = '''
def pre(data, context):
    if data is None:
        return None
    return [context.get_trace_id(i) or "none" for i in range(len(data))]
'''


def attrs(span):
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = value.string_value if value.HasField("string_value") else value.int_value
    return out


def test_server_exports_spans_to_an_otlp_receiver(tmp_path):
    store = tmp_path / "store"
    build_mar(store, "echo", ECHO_HANDLER)
    build_war(store, "tid", "models:\n  echo:\n    url: echo.mar\ndag:\n  pre: [echo]\n",
              TRACE_ID_HANDLER)
    with OtlpReceiver() as receiver, start_server(
            tmp_path, model_store=store,
            config={"otel_exporter_otlp_endpoint": f"http://127.0.0.1:{receiver.port}",
                    "otel_service_name": "dagserve-test"},
            env={"OTEL_BSP_SCHEDULE_DELAY": "50"},
            args=["--disable-token-auth", "--ncs", "--workflows", "tid.war"]) as server:
        r = requests.post(f"{server.inference_url}/wfpredict/tid", data=b"x",
                          headers={"traceparent": TRACEPARENT}, timeout=30)
        assert r.status_code == 200
        # the handler read the trace id the request continued, passed on to its worker
        assert r.text == PARENT_TRACE
        assert wait_until(lambda: len(receiver.spans()) >= 3, timeout=20)
        # exported, but not asked for: not kept in the ring
        kept = requests.get(f"{server.management_url}/workflows/tid/traces", timeout=10)
        assert kept.json()["traces"] == []
        asked = requests.post(f"{server.inference_url}/wfpredict/tid?trace=true", data=b"x",
                              timeout=30)
        kept = requests.get(f"{server.management_url}/workflows/tid/traces", timeout=10)
        assert [t["traceId"] for t in kept.json()["traces"]] == \
            [asked.headers["X-Dagserve-Trace-Id"]]
    spans = receiver.spans()
    root = next(s for s in spans if s.name == "workflow tid")
    assert root.trace_id.hex() == PARENT_TRACE and root.parent_span_id.hex() == PARENT_SPAN
    children = {attrs(s)["dagserve.node"]: s for s in spans
                if s.name.startswith("node ") and s.trace_id == root.trace_id}
    assert set(children) == {"pre", "echo"}
    for node, span in children.items():
        assert span.parent_span_id == root.span_id and span.trace_id == root.trace_id
        a = attrs(span)
        assert a["dagserve.model"] == f"tid__{node}" and a["dagserve.attempt"] == 1
        assert a["dagserve.outcome"] == "ok" and a["dagserve.batch_size"] == 1
    resource = receiver.requests[0].resource_spans[0].resource
    names = [kv.value.string_value for kv in resource.attributes if kv.key == "service.name"]
    assert names == ["dagserve-test"]


# -- configuration ------------------------------------------------------------------------

def test_endpoint_from_config_or_environment(tmp_path):
    from dagserve.engine.config import load_config
    from dagserve.engine.errors import ConfigError
    from dagserve.engine.tracing import tracer_for

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    cfg = load_config(environ=env, workdir=tmp_path)
    assert cfg.otel_exporter_otlp_endpoint == "http://127.0.0.1:4318"
    props = tmp_path / "config.properties"
    props.write_text("otel_exporter_otlp_endpoint=http://127.0.0.1:9999\ntrace_ring_size=7\n")
    cfg = load_config(config_file=props, environ=env, workdir=tmp_path)
    assert cfg.otel_exporter_otlp_endpoint == "http://127.0.0.1:9999"  # the file wins
    tracer = tracer_for(cfg)
    try:
        assert tracer.always and tracer.ring.size == 7
        assert tracer.exporter.provider.resource.attributes["service.name"] == "dagserve"
    finally:
        tracer.close()
    props.write_text("trace_ring_size=-1\n")
    with pytest.raises(ConfigError, match="trace_ring_size"):
        load_config(config_file=props, environ={}, workdir=tmp_path)


def test_nothing_of_opentelemetry_is_imported_when_off():
    code = ("import sys\n"
            "from dagserve.engine.config import Config\n"
            "from dagserve.engine.tracing import tracer_for\n"
            "from dagserve.engine.frontend import inference, observe_routes\n"
            "tracer = tracer_for(Config())\n"
            "assert not tracer.always and tracer.exporter is None\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
