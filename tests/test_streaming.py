"""Streaming with ``send_intermediate_predict_response`` against a real server: one HTTP
chunk (or gRPC StreamPredictions message) per intermediate result, a workflow whose
response node streams passes the stream through, a client that goes away stops the
handler, and a timeout or an error mid-stream reaches the client as an error."""

from __future__ import annotations

import time

import grpc
import pytest
import requests

from grpc_stubs import generate
from server_utils import build_mar, build_war, start_server, wait_until

STREAM_HANDLER = '''
import time
from ts.handler_utils.utils import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    body = bytes(data[0].get("data") or data[0].get("body") or b"")
    if body == b"quick":
        return ["quick"]
    count, pause, fail = 3, 0.2, False
    if body == b"long":
        count, pause = 100, 0.1
    elif body in (b"stall", b"fail"):
        count, fail = 1, True
    for i in range(count):
        send_intermediate_predict_response([f"chunk{i}@{time.time()!r};"] * len(data),
                                           context.request_ids, "Intermediate", 200, context)
        time.sleep(pause)
    if body == b"stall":
        time.sleep(5)  # past the model's response timeout (2 s)
    if fail:
        raise RuntimeError("broke after the first chunk")
    return ["done"] * len(data)
'''
CONFIG = "responseTimeout: 2\n"
WF_HANDLER = '''
def pre(data, context):
    if data is None:
        return None
    return [row.get("data") or row.get("body") for row in data]


def post(data, context):
    if data is None:
        return None
    return [b"POST:" + bytes(row.get("data") or row.get("body")) for row in data]
'''
WF_SPEC = """
models:
  streamer:
    url: stream.mar
dag:
  pre: [streamer]
"""
COLLECTED_SPEC = """
models:
  streamer:
    url: stream.mar
dag:
  streamer: [post]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("streaming")
    store = work / "store"
    build_mar(store, "stream", STREAM_HANDLER, config_yaml=CONFIG)
    build_war(store, "streaming_wf", WF_SPEC, WF_HANDLER)
    build_war(store, "collected_wf", COLLECTED_SPEC, WF_HANDLER)
    args = ["--disable-token-auth", "--ncs", "--models", "stream=stream.mar",
            "--workflows", "streaming_wf.war", "collected_wf.war"]
    with start_server(work, model_store=store, args=args, timeout=120) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server, tmp_path_factory):
    stubs = generate(tmp_path_factory.mktemp("stubs"))
    with grpc.insecure_channel(server.grpc_inference_target) as channel:
        yield stubs, stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)


def read_chunks(url: str, body: bytes) -> list[tuple[float, bytes]]:
    with requests.post(url, data=body, stream=True, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers.get("Transfer-Encoding") == "chunked"
        return [(time.time(), chunk) for chunk in r.iter_content(chunk_size=None)]


def stops(log) -> int:
    """How often a worker stopped a stream whose client went away: interrupted at once (the
    batch had no other client), or at the handler's next send."""
    text = log.read_text()
    return (text.count("batch interrupted (abandoned by the frontend)")
            + text.count("stream stopped: its client went away"))


def check_streamed(received: list[tuple[float, bytes]]) -> None:
    """Three chunks then ``done``, each its own chunk, the first in the client's hands
    before the handler made the last (ordering evidence, not a speed check)."""
    assert received[-1][1] == b"done"
    chunks = [c.decode() for _, c in received[:-1]]
    assert [c.split("@")[0] for c in chunks] == ["chunk0", "chunk1", "chunk2"]
    made = [float(c.split("@")[1].rstrip(";")) for c in chunks]
    assert received[0][0] < made[-1]


def test_http_gets_one_chunk_per_intermediate_result(server):
    check_streamed(read_chunks(server.inference_url + "/predictions/stream", b"x"))


def test_a_workflow_passes_its_response_nodes_stream_through(server):
    check_streamed(read_chunks(server.inference_url + "/wfpredict/streaming_wf", b"x"))


def test_traced_streams_still_stream_and_keep_their_trace(server):
    for path in ("/predictions/stream?trace=true", "/wfpredict/streaming_wf?trace=true"):
        with requests.post(server.inference_url + path, data=b"x", stream=True,
                           timeout=30) as r:
            assert r.status_code == 200 and r.headers["Transfer-Encoding"] == "chunked"
            trace_id = r.headers["X-Dagserve-Trace-Id"]
            received = [(time.time(), c) for c in r.iter_content(chunk_size=None)]
        check_streamed(received)
        kind, name = ("models", "stream") if "predictions" in path else \
            ("workflows", "streaming_wf")
        trace = requests.get(f"{server.management_url}/{kind}/{name}/traces/{trace_id}",
                             timeout=10).json()
        assert trace["status"] == 200
        last = trace["nodes"][-1]["attempts"][0]
        assert last["outcome"] == "ok" and last["message"] == "streams its results"


def test_a_streaming_node_inside_a_workflow_hands_on_its_whole_output(server):
    r = requests.post(server.inference_url + "/wfpredict/collected_wf", data=b"x", timeout=30)
    assert r.status_code == 200
    assert r.content.startswith(b"POST:chunk0@") and r.content.endswith(b";done")
    assert r.content.count(b"chunk") == 3


def test_grpc_predictions_joins_a_stream(server, stub):
    stubs, inference = stub
    request = stubs.inference_pb2.PredictionsRequest(model_name="stream", input={"data": b"x"})
    joined = inference.Predictions(request, timeout=30).prediction
    assert joined.startswith(b"chunk0@") and joined.endswith(b";done")


def test_a_client_that_goes_away_stops_the_stream_and_frees_the_worker(server):
    with requests.post(server.inference_url + "/predictions/stream", data=b"long",
                       stream=True, timeout=30) as r:
        chunks = r.iter_content(chunk_size=None)
        assert next(chunks).startswith(b"chunk0@")
    # the connection is closed: the handler stops at its next send
    log = server.workdir / "logs" / "model_log.log"
    assert wait_until(lambda: stops(log) > 0, 20)
    r = requests.post(server.inference_url + "/predictions/stream", data=b"quick", timeout=30)
    assert r.status_code == 200 and r.content == b"quick"


def test_http_error_mid_stream_is_the_last_chunk_and_the_transfer_fails(server):
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        with requests.post(server.inference_url + "/predictions/stream", data=b"fail",
                           stream=True, timeout=30) as r:
            assert r.status_code == 200
            for chunk in r.iter_content(chunk_size=None):
                received += chunk
    assert received.startswith(b"chunk0@")
    assert b'"code": 503' in received and b"Prediction failed" in received


def test_grpc_timeout_mid_stream_is_deadline_exceeded(server, stub):
    stubs, inference = stub
    request = stubs.inference_pb2.PredictionsRequest(model_name="stream",
                                                     input={"data": b"stall"})
    replies = []
    with pytest.raises(grpc.RpcError) as info:
        for reply in inference.StreamPredictions(request, timeout=30):
            replies.append(reply.prediction)
    assert len(replies) == 1 and replies[0].startswith(b"chunk0@")
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timed out" in info.value.details()
    # the model's worker is started again and serves
    r = requests.post(server.inference_url + "/predictions/stream", data=b"quick", timeout=60)
    assert r.content == b"quick"


def test_a_cancelled_grpc_stream_stops_the_handler(server, stub):
    stubs, inference = stub
    log = server.workdir / "logs" / "model_log.log"
    before = stops(log)
    call = inference.StreamPredictions(stubs.inference_pb2.PredictionsRequest(
        model_name="stream", input={"data": b"long"}), timeout=30)
    assert next(call).prediction.startswith(b"chunk0@")
    call.cancel()
    assert wait_until(lambda: stops(log) > before, 20)
    r = requests.post(server.inference_url + "/predictions/stream", data=b"quick", timeout=60)
    assert r.content == b"quick"
