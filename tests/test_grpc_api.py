"""TorchServe's gRPC APIs, through stubs generated at test time from the project's .proto
files (grpc_stubs.py), against a real server: Ping, Predictions (models and workflows),
StreamPredictions, StreamPredictions2 with sequence ids, the six management calls, the
status codes of bad calls, and token authorization."""

from __future__ import annotations

import socket
import time

import grpc
import pytest
from google.protobuf import empty_pb2

from grpc_stubs import generate
from server_utils import (API_NAMES, ECHO_HANDLER, GRPC_NAMES, build_mar, build_war, free_port,
                          start_server)

STREAM_HANDLER = '''
import time
from ts.handler_utils.utils import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    for i in range(3):
        send_intermediate_predict_response([f"chunk{i}@{time.time()!r};"] * len(data),
                                           context.request_ids, "Intermediate", 200, context)
        time.sleep(0.2)
    return ["done"] * len(data)
'''

SEQUENCE_HANDLER = '''
def handle(data, context):
    if data is None:
        return None
    out = []
    for idx, row in enumerate(data):
        start = context.get_request_header(idx, "ts_request_sequence_start") or "false"
        out.append(f"{context.get_sequence_id(idx)}|{start}|{bytes(row['data']).decode()}")
    return out
'''

WF_HANDLER = '''
def shout(data, context):
    if data is None:
        return None
    return [bytes(row.get("data") or row.get("body")).upper() for row in data]
'''
WF_SPEC = """
models:
  echo:
    url: echo.mar
dag:
  shout: [echo]
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("stubs"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("grpc")
    store = work / "store"
    build_mar(store, "echo", ECHO_HANDLER)
    build_mar(store, "stream", STREAM_HANDLER)
    build_mar(store, "seq", SEQUENCE_HANDLER)
    build_war(store, "shouting", WF_SPEC, WF_HANDLER)
    args = ["--disable-token-auth", "--enable-model-api", "--ncs", "--models",
            "echo=echo.mar", "stream=stream.mar", "seq=seq.mar", "--workflows", "shouting.war"]
    with start_server(work, model_store=store, args=args, timeout=120) as srv:
        yield srv


@pytest.fixture(scope="module")
def inference(server, stubs):
    with grpc.insecure_channel(server.grpc_inference_target) as channel:
        yield stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)


@pytest.fixture(scope="module")
def management(server, stubs):
    with grpc.insecure_channel(server.grpc_management_target) as channel:
        yield stubs.management_pb2_grpc.ManagementAPIsServiceStub(channel)


def predictions(stubs, model, **inputs):
    return stubs.inference_pb2.PredictionsRequest(model_name=model, input=inputs)


def test_ping(inference):
    assert '"Healthy"' in inference.Ping(empty_pb2.Empty()).health


def test_predictions_echo(inference, stubs):
    reply = inference.Predictions(predictions(stubs, "echo", data=b"hello"), timeout=30)
    assert reply.prediction == b"hello"


def test_predictions_on_a_workflow(inference, stubs):
    reply = inference.Predictions(predictions(stubs, "shouting", data=b"quiet"), timeout=30)
    assert reply.prediction == b"QUIET"


@pytest.mark.parametrize("model, code", [("nope", grpc.StatusCode.NOT_FOUND),
                                         ("", grpc.StatusCode.INVALID_ARGUMENT)])
def test_bad_predictions_get_their_status_and_the_server_keeps_serving(inference, stubs,
                                                                       model, code):
    with pytest.raises(grpc.RpcError) as info:
        inference.Predictions(predictions(stubs, model, data=b"x"), timeout=30)
    assert info.value.code() == code
    assert info.value.details()
    assert inference.Predictions(predictions(stubs, "echo", data=b"ok"),
                                 timeout=30).prediction == b"ok"


def test_stream_predictions_sends_each_chunk_as_it_is_made(inference, stubs):
    received = []
    for reply in inference.StreamPredictions(predictions(stubs, "stream", data=b"x"),
                                             timeout=30):
        received.append((time.time(), reply.prediction))
    assert [p for _, p in received][-1] == b"done"
    chunks = [p.decode() for _, p in received[:-1]]
    assert [c.split("@")[0] for c in chunks] == ["chunk0", "chunk1", "chunk2"]
    made = [float(c.split("@")[1].rstrip(";")) for c in chunks]
    # ordering evidence: the first chunk was in the client's hands before the last was made
    assert received[0][0] < made[-1]


def test_stream_predictions2_carries_sequence_ids(inference, stubs):
    pb = stubs.inference_pb2

    def requests():
        yield pb.PredictionsRequest(model_name="seq", input={"data": b"a"}, sequence_id="s-1")
        yield pb.PredictionsRequest(model_name="nope", input={"data": b"b"}, sequence_id="s-1")
        yield pb.PredictionsRequest(model_name="seq", input={"data": b"c"}, sequence_id="s-1")
        yield pb.PredictionsRequest(model_name="seq", input={"data": b"d"})

    replies = list(inference.StreamPredictions2(requests(), timeout=30))
    assert len(replies) == 4
    assert replies[0].prediction == b"s-1|false|a" and replies[0].sequence_id == "s-1"
    assert replies[1].status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "nope" in replies[1].status.message
    assert replies[2].prediction == b"s-1|false|c"
    new_id, start, value = replies[3].prediction.decode().split("|")
    assert new_id.startswith("ts-seq-") and replies[3].sequence_id == new_id
    assert (start, value) == ("true", "d")


def test_management_calls(management, stubs, server):
    pb = stubs.management_pb2
    listed = management.ListModels(pb.ListModelsRequest(), timeout=30).msg
    assert '"echo"' in listed and '"stream"' in listed
    msg = management.RegisterModel(pb.RegisterModelRequest(
        url="echo.mar", model_name="echo2", initial_workers=1, synchronous=True),
        timeout=60).msg
    assert msg == 'Model "echo2" Version: 1.0 registered with 1 initial workers'
    assert '"echo2"' in management.DescribeModel(
        pb.DescribeModelRequest(model_name="echo2"), timeout=30).msg
    assert management.ScaleWorker(pb.ScaleWorkerRequest(
        model_name="echo2", min_worker=2, synchronous=True), timeout=60).msg == \
        "Workers scaled to 2 for model: echo2"
    assert "successfully updated" in management.SetDefault(
        pb.SetDefaultRequest(model_name="echo2", model_version="1.0"), timeout=30).msg
    assert management.UnregisterModel(pb.UnregisterModelRequest(model_name="echo2"),
                                      timeout=60).msg == 'Model "echo2" unregistered'


@pytest.mark.parametrize("call, request_args, code", [
    ("DescribeModel", {"model_name": "nope"}, grpc.StatusCode.NOT_FOUND),
    ("RegisterModel", {"model_name": "x"}, grpc.StatusCode.INVALID_ARGUMENT),
    ("RegisterModel", {"url": "missing.mar"}, grpc.StatusCode.NOT_FOUND),
    ("ScaleWorker", {"model_name": "echo", "min_worker": 3, "max_worker": 1},
     grpc.StatusCode.INVALID_ARGUMENT),
    ("SetDefault", {"model_name": "echo", "model_version": "9.9"}, grpc.StatusCode.NOT_FOUND),
    ("UnregisterModel", {"model_name": "nope"}, grpc.StatusCode.NOT_FOUND),
])
def test_bad_management_calls(management, stubs, call, request_args, code):
    request_type = {"DescribeModel": "DescribeModelRequest", "RegisterModel":
                    "RegisterModelRequest", "ScaleWorker": "ScaleWorkerRequest",
                    "SetDefault": "SetDefaultRequest",
                    "UnregisterModel": "UnregisterModelRequest"}[call]
    message = getattr(stubs.management_pb2, request_type)(**request_args)
    with pytest.raises(grpc.RpcError) as info:
        getattr(management, call)(message, timeout=30)
    assert info.value.code() == code, info.value.details()


def test_token_authorization(tmp_path_factory, stubs):
    tmp_path = tmp_path_factory.mktemp("auth")  # short: worker socket paths live below it
    store = tmp_path / "store"
    build_mar(store, "echo", ECHO_HANDLER)
    with start_server(tmp_path / "work", model_store=store,
                      args=["--models", "echo=echo.mar", "--ncs"]) as srv:
        keys = srv.keys()
        request = predictions(stubs, "echo", data=b"x")
        with grpc.insecure_channel(srv.grpc_inference_target) as channel:
            stub = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
            for metadata in ((), (("authorization", f"Bearer {keys['management']['key']}"),)):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Predictions(request, metadata=metadata, timeout=30)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", f"Bearer {keys['inference']['key']}"),)
            assert stub.Predictions(request, metadata=good, timeout=30).prediction == b"x"
            with pytest.raises(grpc.RpcError) as info:
                list(stub.StreamPredictions(request, timeout=30))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(srv.grpc_management_target) as channel:
            stub = stubs.management_pb2_grpc.ManagementAPIsServiceStub(channel)
            listing = stubs.management_pb2.ListModelsRequest()
            with pytest.raises(grpc.RpcError) as info:
                stub.ListModels(listing, metadata=good, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            mgmt = (("authorization", f"Bearer {keys['management']['key']}"),)
            assert '"echo"' in stub.ListModels(listing, metadata=mgmt, timeout=30).msg


def test_a_taken_grpc_port_stops_the_start_with_a_clear_message(tmp_path_factory):
    work = tmp_path_factory.mktemp("taken")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {api: free_port() for api in API_NAMES + GRPC_NAMES}
        ports["grpc_inference"] = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as info:
            start_server(work, ports=ports, args=["--disable-token-auth", "--ncs"])
    assert f"cannot listen for gRPC on 127.0.0.1:{ports['grpc_inference']}" in str(info.value)


def self_signed(directory) -> tuple:
    """A certificate for 127.0.0.1 / localhost and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_grpc_over_tls(tmp_path_factory, stubs):
    work = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(work)
    config = {"enable_grpc_ssl": True, "certificate_file": cert, "private_key_file": key}
    with start_server(work, config=config, args=["--disable-token-auth", "--ncs"]) as srv:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(srv.grpc_inference_target, credentials) as channel:
            stub = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
            assert '"Healthy"' in stub.Ping(empty_pb2.Empty(), timeout=30).health
        with grpc.insecure_channel(srv.grpc_management_target) as channel:
            stub = stubs.management_pb2_grpc.ManagementAPIsServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.ListModels(stubs.management_pb2.ListModelsRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_without_its_files_is_refused_at_start(tmp_path_factory):
    work = tmp_path_factory.mktemp("notls")
    with pytest.raises(RuntimeError) as info:
        start_server(work, config={"enable_grpc_ssl": True},
                     args=["--disable-token-auth", "--ncs"])
    assert "enable_grpc_ssl=true needs private_key_file" in str(info.value)
