"""Stateful models (``sequenceBatching: true``): sequence ids reach the handler over HTTP and
gRPC StreamPredictions2, the requests of a sequence take turns, and
``maxSequenceJobQueueSize`` bounds how many wait."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
import requests

from grpc_stubs import generate
from server_utils import build_mar, start_server, wait_until

STATEFUL_HANDLER = '''
import os
import time

TOTALS = {}  # sequence id -> running total (one worker keeps the state)


def handle(data, context):
    if data is None:
        return None
    out = []
    for idx, row in enumerate(data):
        sequence = context.get_sequence_id(idx)
        if context.get_request_header(idx, "ts_request_sequence_start") == "true":
            TOTALS[sequence] = 0
        body = bytes(row.get("data") or row.get("body")).decode()
        if body.startswith("wait:"):  # hold the sequence until the test says go
            flag = body[5:]
            open(flag + ".started", "w").close()
            deadline = time.time() + 30
            while not os.path.exists(flag) and time.time() < deadline:
                time.sleep(0.02)
            body = "0"
        TOTALS[sequence] = TOTALS.get(sequence, 0) + int(body)
        out.append(f"{sequence} {TOTALS[sequence]}")
    return out
'''
CONFIG = "sequenceBatching: true\nmaxSequenceJobQueueSize: 1\nminWorkers: 1\nmaxWorkers: 1\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("seq")
    store = work / "store"
    build_mar(store, "stateful", STATEFUL_HANDLER, config_yaml=CONFIG)
    with start_server(work, model_store=store, timeout=120,
                      args=["--disable-token-auth", "--ncs", "--models",
                            "stateful=stateful.mar"]) as srv:
        yield srv


def post(server, body: str, sequence: str | None = None) -> requests.Response:
    headers = {"ts_request_sequence_id": sequence} if sequence else {}
    return requests.post(server.inference_url + "/predictions/stateful", data=body,
                         headers=headers, timeout=60)


def test_http_requests_carry_their_sequence(server):
    first = post(server, "5")
    assert first.status_code == 200
    sequence = first.headers["ts_request_sequence_id"]
    assert sequence.startswith("ts-seq-") and first.text == f"{sequence} 5"
    second = post(server, "3", sequence)
    assert second.text == f"{sequence} 8"
    assert second.headers["ts_request_sequence_id"] == sequence
    assert post(server, "1", "mine").text == "mine 1"


def test_at_most_max_sequence_job_queue_size_wait(server, tmp_path):
    flag = tmp_path / "go"
    results: dict[str, requests.Response] = {}

    def send(key: str, body: str) -> None:
        results[key] = post(server, body, "held")

    holder = threading.Thread(target=send, args=("a", f"wait:{flag}"))
    holder.start()
    assert wait_until(lambda: Path(f"{flag}.started").exists(), 30)
    others = [threading.Thread(target=send, args=(k, "2")) for k in ("b", "c")]
    for t in others:
        t.start()
    # one of b, c waits behind a (the queue holds one); the other is refused now
    assert wait_until(lambda: len(results) == 1, 30)
    refused = next(iter(results.values()))
    assert refused.status_code == 503 and "maxSequenceJobQueueSize" in refused.text
    flag.touch()
    for t in [holder, *others]:
        t.join(60)
    assert results["a"].text == "held 0"
    accepted = [r for k, r in results.items() if k != "a" and r is not refused]
    assert [r.text for r in accepted] == ["held 2"]


def test_stream_predictions2_keeps_a_sequences_state(server, tmp_path):
    stubs = generate(tmp_path / "stubs")
    pb = stubs.inference_pb2

    def requests_():
        yield pb.PredictionsRequest(model_name="stateful", input={"data": b"4"})
        yield pb.PredictionsRequest(model_name="stateful", input={"data": b"6"},
                                    sequence_id="g-1")
        yield pb.PredictionsRequest(model_name="stateful", input={"data": b"1"},
                                    sequence_id="g-1")

    with grpc.insecure_channel(server.grpc_inference_target) as channel:
        stub = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        replies = list(stub.StreamPredictions2(requests_(), timeout=60))
    new = replies[0].sequence_id
    assert new.startswith("ts-seq-") and replies[0].prediction.decode() == f"{new} 4"
    assert [r.prediction.decode() for r in replies[1:]] == ["g-1 6", "g-1 7"]
