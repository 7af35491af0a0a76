"""The inference API against the real server: models loaded at start with --models, eager
and TorchScript models, function and TorchServe-style handlers, batching, worker crashes
and timeouts, handler errors, queue limits, and TorchServe's error bodies."""

from __future__ import annotations

import base64
import io
import json
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from model_builders import archive, handler_archive, tiny_models
from server_utils import start_server, wait_until

IMAGE_MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class ColourNet(nn.Module):
        """Says which colour channel dominates the picture: red, green or blue."""

        def __init__(self):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(self.pool(x).flatten(1))
''')


def one_worker(tmp, name: str, **settings) -> object:
    body = {"minWorkers": 1, "maxWorkers": 1, **settings}
    path = tmp / f"{name}-config.yaml"
    path.write_text("\n".join(f"{k}: {v}" for k, v in body.items()) + "\n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import torch

    work = tmp_path_factory.mktemp("inference")
    store = work / "store"
    src = work / "src"
    src.mkdir()
    store.mkdir()
    handler_archive("echo", "echo_handler.py", store, config_file=one_worker(src, "echo"))
    handler_archive("batcher", "batch_size_handler.py", store,
                    config_file=one_worker(src, "batcher", batchSize=8, maxBatchDelay=500))
    handler_archive("crasher", "crash_handler.py", store, config_file=one_worker(src, "crasher"))
    handler_archive("errors", "errors_handler.py", store, config_file=one_worker(src, "errors"))
    handler_archive("slow", "slow_handler.py", store,
                    config_file=one_worker(src, "slow", responseTimeout=2))
    handler_archive("upper", "ts_style_handler.py", store, config_file=one_worker(src, "upper"))
    handler_archive("echo", "echo_handler.py", store, version="2.0",
                    config_file=one_worker(src, "echo2"))
    (store / "echo.mar").rename(store / "echo_v2.mar")
    handler_archive("echo", "echo_handler.py", store, config_file=one_worker(src, "echo"))
    tiny_models(store, src / "tiny")
    # a colour classifier for the built-in image_classifier handler
    (src / "colour_model.py").write_text(IMAGE_MODEL)
    ns: dict = {}
    exec(compile(IMAGE_MODEL, "colour_model", "exec"), ns)
    net = ns["ColourNet"]()
    with torch.no_grad():
        net.fc.weight.copy_(torch.eye(3) * 10)
        net.fc.bias.zero_()
    torch.save(net.state_dict(), src / "colour.pt")
    (src / "index_to_name.json").write_text(json.dumps({"0": "red", "1": "green", "2": "blue"}))
    archive("colours", "image_classifier", store, model_file=src / "colour_model.py",
            serialized=src / "colour.pt", extra=[src / "index_to_name.json"],
            config_file=one_worker(src, "colours"))
    models = ["echo.mar", "echo_v2.mar", "batcher.mar", "crasher.mar", "errors.mar",
              "slow.mar", "upper.mar", "tiny_eager.mar", "tiny_ts.mar", "colours.mar"]
    with start_server(work, model_store=store, args=["--disable-token-auth", "--ncs",
                                                      "--models", *models],
                      config={"job_queue_size": 6, "max_request_size": 100000},
                      timeout=120) as srv:
        yield srv


def post(server, path: str, data=b"", **kw) -> requests.Response:
    return requests.post(server.inference_url + path, data=data, timeout=30, **kw)


def test_ping_is_healthy(server):
    r = requests.get(server.inference_url + "/ping", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"status": "Healthy"}


def test_function_handler_echoes_raw_body_with_request_id(server):
    r = post(server, "/predictions/echo", b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200
    assert r.content == b"hello"
    assert len(r.headers["x-request-id"]) >= 32


def test_put_and_multipart_and_form_reach_the_handler(server):
    r = requests.put(server.inference_url + "/predictions/echo", data=b"put body",
                     headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert r.content == b"put body"
    r = post(server, "/predictions/echo", files={"data": ("x.bin", b"\x00\x01multi")})
    assert r.content == b"\x00\x01multi"
    r = post(server, "/predictions/echo", data={"data": "form value"})
    assert r.content == b"form value"


def test_json_body_is_decoded_for_the_handler(server):
    r = post(server, "/predictions/echo", b'{"a": [1, 2]}',
             headers={"Content-Type": "application/json"})
    assert json.loads(r.content) == {"a": [1, 2]}


def test_versions(server):
    assert post(server, "/predictions/echo/2.0", b"v2",
                headers={"Content-Type": "text/plain"}).content == b"v2"
    r = post(server, "/predictions/echo/9.9", b"x")
    assert r.status_code == 404
    assert r.json() == {"code": 404, "type": "ModelNotFoundException",
                        "message": "Model version: 9.9 does not exist for model: echo"}


def test_unknown_model_and_path_and_method(server):
    r = post(server, "/predictions/nope", b"x")
    assert r.status_code == 404
    assert r.json()["message"] == "Model not found: nope"
    r = requests.get(server.inference_url + "/no/such/path", timeout=10)
    assert r.status_code == 404
    assert r.json()["message"] == "Requested resource is not found, please refer to API document."
    r = requests.get(server.inference_url + "/predictions/echo", timeout=10)
    assert r.status_code == 405
    assert r.json()["code"] == 405


def test_openapi_description(server):
    r = requests.options(server.inference_url + "/", timeout=10)
    assert r.status_code == 200
    assert "/predictions/{model_name}" in r.json()["paths"]


def test_body_too_large_is_413(server):
    r = post(server, "/predictions/echo", b"x" * 200000)
    assert r.status_code == 413
    assert r.json()["code"] == 413
    assert post(server, "/predictions/echo", b"ok",
                headers={"Content-Type": "text/plain"}).content == b"ok"


def test_eager_and_torchscript_models(server):
    for name in ("tiny_eager", "tiny_ts"):
        r = post(server, f"/predictions/{name}", b"[5, 1, 0]",
                 headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.text == "right"
        r = post(server, f"/predictions/{name}", b"[0, 5, 0]",
                 headers={"Content-Type": "application/json"})
        assert r.text == "left"


def test_torchserve_style_handler_runs_unchanged(server):
    r = post(server, "/predictions/upper", b"shout", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    assert r.json() == {"model": "upper", "text": "SHOUT"}


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_image_classifier_builtin_top_classes(server):
    r = post(server, "/predictions/colours", png((10, 200, 20)))
    assert r.status_code == 200, r.text
    probs = r.json()
    assert list(probs)[0] == "green"
    assert abs(sum(probs.values()) - 1) < 1e-3
    text = base64.b64encode(png((10, 20, 220)))
    r = post(server, "/predictions/colours", text, headers={"Content-Type": "text/plain"})
    assert list(r.json())[0] == "blue"


def test_malformed_image_is_a_clear_error_and_the_model_keeps_serving(server):
    r = post(server, "/predictions/colours", b"this is not an image")
    assert 400 <= r.status_code < 600
    assert r.json()["code"] == r.status_code
    assert post(server, "/predictions/colours", png((250, 0, 0))).status_code == 200


@pytest.mark.parametrize("what,status,message", [
    ("prediction_exception", 422, "the model refuses this input"),
    ("wrong_length", 503, "number of batch response mismatched"),
    ("not_a_list", 503, "Invalid model predict output"),
    ("memory_error", 507, None),
    ("generic", 503, "Prediction failed"),
])
def test_handler_errors_map_to_torchserve_statuses(server, what, status, message):
    r = post(server, "/predictions/errors", what.encode(), headers={"Content-Type": "text/plain"})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == status
    if message:
        assert message in body["message"]


def test_handler_status_content_type_and_headers_reach_the_client(server):
    r = post(server, "/predictions/errors", b"status", headers={"Content-Type": "text/plain"})
    assert r.status_code == 201
    assert r.headers["Content-Type"].startswith("text/x-custom")
    assert r.headers["X-Handler"] == "yes"
    assert r.content == b"made"


def test_concurrent_requests_reach_the_handler_as_one_batch(server):
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: post(server, "/predictions/batcher", b"x"), range(6)))
    assert all(r.status_code == 200 for r in results)
    sizes = [r.json()["batch"] for r in results]
    assert max(sizes) > 1, sizes


def test_worker_that_dies_mid_request_gets_5xx_and_comes_back(server):
    r = post(server, "/predictions/crasher", b"crash", headers={"Content-Type": "text/plain"})
    assert 500 <= r.status_code < 600
    assert r.json()["code"] == r.status_code

    def serves() -> bool:
        resp = post(server, "/predictions/crasher", b"alive", headers={"Content-Type": "text/plain"})
        return resp.status_code == 200 and resp.content == b"alive"

    assert wait_until(serves, timeout=30, interval=0.3)


def test_worker_past_its_response_timeout_is_restarted(server):
    start = time.monotonic()
    r = post(server, "/predictions/slow", b"6000", headers={"Content-Type": "text/plain"})
    assert 500 <= r.status_code < 600
    assert time.monotonic() - start < 5.5
    assert wait_until(lambda: post(server, "/predictions/slow", b"1",
                                   headers={"Content-Type": "text/plain"}).status_code == 200,
                      timeout=30, interval=0.3)


def test_full_queue_answers_503_and_loses_nothing_else(server):
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: post(server, "/predictions/slow", b"300",
                                               headers={"Content-Type": "text/plain"}), range(12)))
    codes = sorted(r.status_code for r in results)
    assert 503 in codes
    assert 200 in codes
    assert set(codes) <= {200, 503}
    full = next(r for r in results if r.status_code == 503)
    assert full.json()["code"] == 503
    assert post(server, "/predictions/echo", b"still fine",
                headers={"Content-Type": "text/plain"}).content == b"still fine"
