"""The Open Inference Protocol's tensor layer without a server: binary round trips of every
datatype, the checks' messages, and the kservev2 envelope's view of a batch."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import pytest

from dagserve.engine.handler.request_envelope import envelope_class
from dagserve.engine.v2_tensors import (DATATYPES, TensorError, check_data, decode_binary,
                                        encode_binary, reshape, to_tensor)

VALUES = {"BOOL": [True, False], "UINT8": [0, 255], "UINT16": [0, 65535],
          "UINT32": [0, 2**32 - 1], "UINT64": [0, 2**64 - 1], "INT8": [-128, 127],
          "INT16": [-2**15, 2**15 - 1], "INT32": [-2**31, 2**31 - 1],
          "INT64": [-2**63, 2**63 - 1], "FP16": [0.5, -2.0], "BF16": [1.5, -3.0],
          "FP32": [0.25, 1e10], "FP64": [1e-300, 2.5], "BYTES": [b"", b"\xff\x00bytes"]}


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_binary_round_trip(datatype):
    values = VALUES[datatype]
    raw = encode_binary(datatype, values)
    assert decode_binary("x", datatype, [len(values)], raw) == values


def test_binary_layout_is_little_endian():
    assert encode_binary("INT32", [1]) == b"\x01\x00\x00\x00"
    assert encode_binary("BYTES", [b"ab"]) == struct.pack("<I", 2) + b"ab"


@pytest.mark.parametrize("datatype, shape, data, message", [
    ("INT32", [2, 2], [1, 2, 3], "needs 4 elements"),
    ("UINT8", [1], [-1], "[0, 255]"),
    ("BOOL", [1], [1], "true or false"),
    ("FP32", [1], ["x"], "numbers"),
    ("BYTES", [1], [1], "strings"),
])
def test_check_data_says_what_is_wrong(datatype, shape, data, message):
    with pytest.raises(TensorError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_data("x", datatype, shape, data)


def test_truncated_binary_is_an_error():
    with pytest.raises(TensorError, match="needs 8 bytes"):
        decode_binary("x", "FP32", [2], b"\0" * 4)
    with pytest.raises(TensorError, match="truncated"):
        decode_binary("x", "BYTES", [1], struct.pack("<I", 5) + b"ab")


def test_reshape_and_to_tensor():
    assert reshape([1, 2, 3, 4, 5, 6], [2, 3]) == [[1, 2, 3], [4, 5, 6]]
    assert to_tensor("y", [[1, 2], [3, 4]]) == {"name": "y", "datatype": "INT64",
                                                "shape": [2, 2], "data": [1, 2, 3, 4]}
    assert to_tensor("t", "text")["datatype"] == "BYTES"


def test_kservev2_envelope_batch_view():
    seen = []

    def handler(data, context):
        seen.append(data)
        return [[[v[0] * 10] for v in row["data"]] if row["datatype"] == "INT32"
                else [v * 10 for v in row["data"]] if row["datatype"] == "FP32"
                else row["data"].upper() for row in data]

    context = SimpleNamespace(manifest={"model": {"modelName": "m", "modelVersion": "2"}},
                              model_name="m", get_request_id=lambda idx: f"req{idx}")
    envelope = envelope_class("kservev2")(handler)
    rows = [{"body": {"id": "a", "inputs": [
                {"name": "x", "datatype": "INT32", "shape": [2, 1], "data": [1, 2]},
                {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}},
            {"body": json.dumps({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1],
                                             "data": [0.5]}]}).encode()}]
    out = [json.loads(o) for o in envelope.handle(rows, context)]
    assert seen[0][0]["data"] == [[1], [2]] and seen[0][1]["data"] == "hi"
    assert [o["id"] for o in out] == ["a", "req1"]
    assert out[0]["outputs"][0] == {"name": "x", "datatype": "INT64", "shape": [2, 1],
                                    "data": [10, 20]}
    assert out[0]["outputs"][1]["data"] == ["HI"]
    assert out[1]["outputs"][0]["name"] == "z" and out[1]["model_version"] == "2"


def test_a_batch_of_v2_and_plain_requests_gets_each_its_own_view():
    from dagserve.engine.handler.context import Context
    from dagserve.engine.handler.service import V2_HEADER, Service
    from dagserve.engine.messages import Param, Request

    def handler(data, context):
        return [f"v2 view {row['name']}" if "datatype" in row else
                f"plain {bytes(row['body']).decode()}" for row in data]

    context = Context("m", "/tmp", {"model": {"modelName": "m", "modelVersion": "1"}}, 2,
                      None, "test")
    v2_body = json.dumps({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1],
                                      "data": [1]}]}).encode()
    requests = [Request("r0", [Param("body", None, b"hello")]),
                Request("r1", [Param("body", "application/json", v2_body)], {V2_HEADER: "1"})]
    responses, _ = Service(context, handler).predict(requests)
    assert responses[0].value == b"plain hello"
    out = json.loads(responses[1].value)
    assert out["id"] == "r1" and out["outputs"][0]["data"] == ["v2 view x"]
    assert context.request_ids == {0: "r0", 1: "r1"}  # restored after the split


def test_ts_names_of_the_envelopes_and_streaming_helpers():
    import importlib

    from dagserve.engine.handler import streaming, ts_alias
    from dagserve.engine.handler.request_envelope import kservev2

    ts_alias.install()  # idempotent; left installed, as other test modules expect it
    module = importlib.import_module("ts.torch_handler.request_envelope.kservev2")
    assert module.KServev2Envelope is kservev2.KServev2Envelope
    base = importlib.import_module("ts.torch_handler.request_envelope.base")
    assert issubclass(module.KServev2Envelope, base.BaseEnvelope)
    utils = importlib.import_module("ts.handler_utils.utils")
    assert utils.send_intermediate_predict_response is \
        streaming.send_intermediate_predict_response
    assert utils.import_class("json.JSONDecoder") is json.JSONDecoder
