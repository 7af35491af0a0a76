"""The Open Inference Protocol (KServe v2) through tritonclient, over REST (JSON and binary
tensors) and gRPC, against a real server: health, metadata, infer on a model (its handler
sees the kservev2 envelope's view) and on a workflow, every datatype tritonclient sends,
BYTES, and the protocol's errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server_utils import build_mar, build_war, start_server

DOUBLE_HANDLER = '''
import torch

DTYPES = {"FP16": torch.float16, "FP32": torch.float32, "FP64": torch.float64,
          "INT8": torch.int8, "INT16": torch.int16, "INT32": torch.int32,
          "INT64": torch.int64, "UINT8": torch.uint8, "UINT16": torch.uint16,
          "UINT32": torch.uint32, "UINT64": torch.uint64, "BOOL": torch.bool}


def handle(data, context):
    """The kservev2 view: one dict per input tensor, data shaped as the tensor."""
    if data is None:
        return None
    if context.get_request_header(0, "explain") == "True":
        return [f"explained {tensor['name']}" for tensor in data]
    out = []
    for tensor in data:
        assert set(tensor) == {"name", "shape", "datatype", "data"}, tensor
        if tensor["datatype"] == "BYTES":
            value = tensor["data"]
            out.append((value if isinstance(value, str) else value.decode()).upper())
            continue
        t = torch.tensor(tensor["data"], dtype=DTYPES[tensor["datatype"]])
        assert list(t.shape) == tensor["shape"], (t.shape, tensor["shape"])
        if tensor["datatype"] == "BOOL":
            out.append(~t)
        elif tensor["datatype"].startswith("UINT") and tensor["datatype"] != "UINT8":
            out.append(t)  # torch has few operations on these: sent back unchanged
        else:
            out.append(t * 2)
    assert context.input_names == [t["name"] for t in data]
    return out
'''

WF_HANDLER = '''
import json


def scale(data, context):
    """x (a JSON tensor, shaped) times 3, as a flat list."""
    if data is None:
        return None
    out = []
    for row in data:
        flat, todo = [], [row["x"]]
        while todo:
            item = todo.pop(0)
            if isinstance(item, list):
                todo[0:0] = item
            else:
                flat.append(item)
        out.append(json.dumps([3 * v for v in flat]))
    return out
'''
WF_SPEC = """
models:
  min-workers: 1
dag:
  scale: []
"""

DOUBLED = ["FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8"]
UNCHANGED = ["UINT16", "UINT32", "UINT64"]
NUMPY = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT8": np.int8,
         "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8,
         "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("oip")
    store = work / "store"
    build_mar(store, "double", DOUBLE_HANDLER)
    build_war(store, "tripler", WF_SPEC, WF_HANDLER)
    args = ["--disable-token-auth", "--ncs", "--models", "double=double.mar",
            "--workflows", "tripler.war"]
    with start_server(work, model_store=store, args=args, timeout=120) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    client = httpclient.InferenceServerClient(server.inference_url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = grpcclient.InferenceServerClient(server.grpc_inference_target)
    yield client
    client.close()


def sample(datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    return np.arange(6).reshape(2, 3).astype(NUMPY[datatype])


def expected(datatype: str, array: np.ndarray) -> np.ndarray:
    if datatype == "BOOL":
        return ~array
    return array if datatype in UNCHANGED else array * 2


def test_health_and_metadata_http(http):
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready("double") and http.is_model_ready("tripler")
    assert http.get_server_metadata()["name"] == "dagserve"
    meta = http.get_model_metadata("double")
    assert meta["name"] == "double" and meta["versions"] == ["1.0"]


def test_health_and_metadata_grpc(grpc_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("double")
    assert grpc_client.get_server_metadata().name == "dagserve"
    assert grpc_client.get_model_metadata("double").versions == ["1.0"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", DOUBLED + UNCHANGED + ["BOOL"])
def test_infer_every_datatype_over_rest(http, datatype, binary):
    array = sample(datatype)
    tensor = httpclient.InferInput("x", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    result = http.infer("double", [tensor],
                        outputs=[httpclient.InferRequestedOutput("x", binary_data=binary)])
    out = result.as_numpy("x")
    np.testing.assert_array_equal(out.reshape(array.shape), expected(datatype, array))
    assert result.get_output("x")["datatype"] == datatype


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "INT8", "INT64", "UINT32", "BOOL"])
def test_infer_over_grpc(grpc_client, datatype):
    array = sample(datatype)
    tensor = grpcclient.InferInput("x", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    result = grpc_client.infer("double", [tensor])
    np.testing.assert_array_equal(result.as_numpy("x").reshape(array.shape),
                                  expected(datatype, array))


@pytest.mark.parametrize("client_kind", ["http", "grpc"])
def test_bytes_and_several_inputs(http, grpc_client, client_kind):
    module, client = (httpclient, http) if client_kind == "http" else (grpcclient, grpc_client)
    text = module.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hello"], dtype=object))
    numbers = module.InferInput("n", [3], "INT32")
    numbers.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
    result = client.infer("double", [text, numbers], request_id="req-7")
    assert result.as_numpy("text").tolist() == [b"HELLO"]
    assert result.as_numpy("n").tolist() == [2, 4, 6]
    response = result.get_response()
    assert (response["id"] if client_kind == "http" else response.id) == "req-7"


@pytest.mark.parametrize("client_kind", ["http", "grpc"])
def test_infer_on_a_workflow(http, grpc_client, client_kind):
    module, client = (httpclient, http) if client_kind == "http" else (grpcclient, grpc_client)
    x = module.InferInput("x", [2, 2], "INT64")
    x.set_data_from_numpy(np.array([[1, 2], [3, 4]], dtype=np.int64))
    result = client.infer("tripler", [x])
    assert result.as_numpy("scale").tolist() == [3, 6, 9, 12]


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"inputs": []}).encode(), "no 'inputs'"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3],
                             "data": [1, 2]}]}).encode(), "needs 3 elements"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1],
                             "data": [300]}]}).encode(), "[-128, 127]"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "COMPLEX", "shape": [1],
                             "data": [1]}]}).encode(), "unsupported datatype"),
])
def test_bad_rest_input_is_a_v2_400(server, body, message):
    r = requests.post(server.inference_url + "/v2/models/double/infer", data=body, timeout=30)
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_binary_size_that_does_not_fit_is_a_400(server):
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    r = requests.post(server.inference_url + "/v2/models/double/infer",
                      data=header + b"\0" * 4, timeout=30,
                      headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"]


def test_unknown_model_and_bad_method(server, http):
    r = requests.post(server.inference_url + "/v2/models/nope/infer", json={}, timeout=30)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = requests.get(server.inference_url + "/v2/models/double/infer", timeout=30)
    assert r.status_code == 405 and "error" in r.json()
    with pytest.raises(InferenceServerException):
        http.get_model_metadata("nope")


def test_explain_reaches_the_handler(server):
    body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]}
    r = requests.post(server.inference_url + "/v2/models/double/explain", json=body,
                      timeout=30)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == ["explained x"]


def test_bad_grpc_input_gets_its_status_and_the_server_keeps_serving(grpc_client):
    tensor = grpcclient.InferInput("x", [2], "INT32")
    tensor.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    tensor.set_shape([3])  # two elements, the shape says three
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("double", [tensor])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("nope", [tensor])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    good = grpcclient.InferInput("x", [2], "INT32")
    good.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    assert grpc_client.infer("double", [good]).as_numpy("x").tolist() == [2, 4]


def test_service_envelope_and_v2_switch(tmp_path_factory):
    """service_envelope=kservev2 puts /predictions through the envelope;
    ts_open_inference_protocol=false turns the /v2 routes off."""
    tmp_path = tmp_path_factory.mktemp("env")  # short: worker socket paths live below it
    store = tmp_path / "store"
    build_mar(store, "double", DOUBLE_HANDLER)
    config = {"service_envelope": "kservev2", "ts_open_inference_protocol": False}
    with start_server(tmp_path / "work", model_store=store, config=config,
                      args=["--disable-token-auth", "--ncs", "--models",
                            "double=double.mar"]) as srv:
        body = {"id": "r1", "inputs": [{"name": "x", "datatype": "INT32", "shape": [2],
                                        "data": [5, 6]}]}
        r = requests.post(srv.inference_url + "/predictions/double", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["id"] == "r1" and out["outputs"][0]["data"] == [10, 12]
        assert requests.get(srv.inference_url + "/v2/health/live", timeout=30).status_code \
            == 404


def test_versioned_routes(server):
    body = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [21]}]}
    base = server.inference_url + "/v2/models/double/versions"
    r = requests.post(base + "/1.0/infer", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [42]
    assert r.json()["model_version"] == "1.0"
    assert requests.get(base + "/1.0/ready", timeout=30).json()["ready"] is True
    r = requests.post(base + "/9.9/infer", json=body, timeout=30)
    assert r.status_code == 404 and "9.9" in r.json()["error"]


def test_workflow_versions(server):
    meta = requests.get(server.inference_url + "/v2/models/tripler", timeout=30).json()
    assert meta["platform"] == "dagserve_workflow" and meta["outputs"][0]["name"] == "scale"
    version = meta["versions"][0]
    body = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [2], "data": [1, 2]}]}
    base = server.inference_url + "/v2/models/tripler/versions"
    r = requests.post(f"{base}/{version}/infer", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [3, 6]
    assert r.json()["model_version"] == version
    r = requests.post(f"{base}/9.9/infer", json=body, timeout=30)
    assert r.status_code == 404 and "error" in r.json()
