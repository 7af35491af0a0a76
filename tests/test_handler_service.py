"""Service.predict: input decoding, output encoding, error mapping, status/header
propagation and metrics, with small handler files written per test."""

from __future__ import annotations

import io
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dagserve.engine.handler import ts_alias
from dagserve.engine.handler.service import ServiceConfig, decode_value, encode_output, load_service
from dagserve.engine.messages import Param, Request


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    ts_alias.install()


def make_service(tmp_path: Path, source: str, *, handler: str = "h.py",
                 manifest: dict | None = None, files: dict[str, str] | None = None, **config):
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    module = handler.split(":")[0].removesuffix(".py")
    (model_dir / f"{module}.py").write_text(textwrap.dedent(source))
    for name, text in (files or {}).items():
        (model_dir / name).write_text(text)
    if manifest is not None:
        (model_dir / "MAR-INF").mkdir(exist_ok=True)
        (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    return load_service(ServiceConfig(model_dir, "m", handler, **config))


def req(rid: str, value: bytes, ct: str | None = None, name: str = "body",
        headers: dict | None = None) -> Request:
    return Request(rid, [Param(name, ct, value)], headers or {})


ECHO = """
    def handle(data, context):
        if data is None:
            return None
        return [repr(row) for row in data]
"""


# -- input decoding ------------------------------------------------------------------------

def test_inputs_are_decoded_by_content_type(tmp_path):
    service = make_service(tmp_path, ECHO)
    resps, _ = service.predict([
        req("a", b'{"x": [1, 2]}', "application/json"),
        req("b", b"not json", "application/json"),
        req("c", "h\u00e9".encode(), "text/plain; charset=utf-8"),
        req("d", b"\x00\xff", "application/octet-stream"),
        req("e", b"raw", None),
        req("f", b"\xff\xfe", "text/plain"),
        Request("g", [Param("data", "text/plain", b"x"), Param("k", "application/json", b"3")]),
    ])
    assert [r.value.decode() for r in resps] == [
        "{'body': {'x': [1, 2]}}",
        "{'body': b'not json'}",
        "{'body': 'h\u00e9'}",
        "{'body': b'\\x00\\xff'}",
        "{'body': b'raw'}",
        "{'body': b'\\xff\\xfe'}",
        "{'data': 'x', 'k': 3}",
    ]
    assert all(r.code == 200 for r in resps)


def test_decode_input_false_keeps_bytes(tmp_path):
    service = make_service(tmp_path, ECHO, decode_input=False)
    resps, _ = service.predict([req("a", b'{"x": 1}', "application/json"),
                                req("b", b"t", "text/plain")])
    assert [r.value for r in resps] == [b"{'body': b'{\"x\": 1}'}", b"{'body': b't'}"]


def test_decode_value_rules():
    assert decode_value("Application/JSON", b"[1]") == [1]
    assert decode_value("application/json", b"") == b""
    assert decode_value("text/csv", b"a,b") == "a,b"
    assert decode_value("image/png", b"\x89PNG") == b"\x89PNG"


# -- output encoding -----------------------------------------------------------------------

def test_output_items_are_encoded_by_type(tmp_path):
    service = make_service(tmp_path, """
        import torch
        def handle(data, context):
            if data is None:
                return None
            return [b"raw", bytearray(b"ba"), "t\u00e9xt", torch.tensor([1.0, 2.0]),
                    {"a": [1, 2]}, None, {"t": torch.tensor([0.5])}]
    """)
    resps, _ = service.predict([req(str(i), b"x") for i in range(7)])
    values = [r.value for r in resps]
    assert values[:3] == [b"raw", b"ba", "t\u00e9xt".encode()]
    assert torch.equal(torch.load(io.BytesIO(values[3])), torch.tensor([1.0, 2.0]))
    assert values[4] == json.dumps({"a": [1, 2]}, indent=2).encode()
    assert values[5] == b"null"
    assert json.loads(values[6]) == {"t": [0.5]}
    assert [r.id for r in resps] == [str(i) for i in range(7)]


def test_encode_output_rejects_unserializable():
    with pytest.raises(TypeError):
        encode_output({"x": object()})


def test_unencodable_output_fails_the_batch(tmp_path):
    service = make_service(tmp_path, """
        def handle(data, context):
            return None if data is None else [object() for _ in data]
    """)
    resps, _ = service.predict([req("a", b"x"), req("b", b"y")])
    assert [(r.code, r.message) for r in resps] == [
        (503, "Unsupported model output data type.")] * 2


# -- error mapping -------------------------------------------------------------------------

@pytest.mark.parametrize("body, code, message", [
    ("raise PredictionException('bad input here', 422)", 422, "bad input here"),
    ("raise PredictionException('no code')", 500, "no code"),
    ("raise MemoryError()", 507, None),
    ("raise RuntimeError('CUDA error: device-side assert triggered')", 507, None),
    ("raise ValueError('boom')", 503, "Prediction failed"),
    ("return {'not': 'a list'}", 503, "Invalid model predict output"),
    ("return ['only one']", 503, "number of batch response mismatched"),
])
def test_errors_fail_every_request_of_the_batch(tmp_path, capsys, body, code, message):
    service = make_service(tmp_path, f"""
        from ts.utils.util import PredictionException
        def handle(data, context):
            if data is None:
                return None
            {body}
    """)
    resps, _ = service.predict([req("a", b"x"), req("b", b"y"), req("c", b"z")])
    assert [r.id for r in resps] == ["a", "b", "c"]
    assert {r.code for r in resps} == {code}
    assert all(r.value == b"" for r in resps)
    if message is not None:
        assert {r.message for r in resps} == {message}
    else:
        assert all(r.message.startswith("Out of resources") for r in resps)
    if "ValueError" in body:
        assert "ValueError: boom" in capsys.readouterr().err  # the traceback reaches the log


def test_handlers_own_prediction_exception_class_counts(tmp_path):
    service = make_service(tmp_path, """
        class PredictionException(Exception):
            def __init__(self, message, error_code=500):
                self.message, self.error_code = message, error_code
                super().__init__(message)

        def handle(data, context):
            if data is None:
                return None
            raise PredictionException("custom", 409)
    """)
    resps, _ = service.predict([req("a", b"x")])
    assert (resps[0].code, resps[0].message) == (409, "custom")


def test_service_keeps_working_after_a_failed_batch(tmp_path):
    service = make_service(tmp_path, """
        def handle(data, context):
            if data is None:
                return None
            if data[0]["body"] == "fail":
                raise RuntimeError("nope")
            return [row["body"].upper() for row in data]
    """)
    bad, _ = service.predict([req("a", b"fail", "text/plain")])
    good, _ = service.predict([req("b", b"ok", "text/plain")])
    assert bad[0].code == 503 and good[0].code == 200 and good[0].value == b"OK"


# -- status, content type, headers ---------------------------------------------------------

def test_status_content_type_and_headers_reach_the_response(tmp_path):
    service = make_service(tmp_path, """
        def handle(data, context):
            if data is None:
                return None
            context.set_response_content_type(0, "application/x-custom")
            context.set_response_header(0, "X-Extra", "1")
            context.set_response_status(201, "Created", idx=1)
            context.set_response_status(418, "I am a teapot", idx=2)
            context.set_response_status(409, idx=3)
            return ["zero", "one", "two", "three", "four"]
    """)
    resps, _ = service.predict([req(str(i), b"x") for i in range(5)])
    r0, r1, r2, r3, r4 = resps
    assert (r0.code, r0.content_type, r0.headers, r0.value) == (
        200, "application/x-custom", {"X-Extra": "1"}, b"zero")
    assert (r1.code, r1.message, r1.value) == (201, "Created", b"one")
    assert (r2.code, r2.message, r2.value) == (418, "I am a teapot", b"two")
    assert (r3.code, r3.message) == (409, "three")  # no phrase: the output text
    assert (r4.code, r4.content_type, r4.headers, r4.message) == (200, None, {}, "")


def test_set_all_response_status_and_header_case(tmp_path):
    service = make_service(tmp_path, """
        def handle(data, context):
            if data is None:
                return None
            context.set_all_response_status(400, "Bad")
            context.set_response_header(1, "Content-Type", "text/csv")
            return ["a", "b"]
    """)
    resps, _ = service.predict([req("a", b"x"), req("b", b"y")])
    assert [(r.code, r.message) for r in resps] == [(400, "Bad"), (400, "Bad")]
    assert resps[1].content_type == "text/csv" and resps[1].headers == {}


def test_status_is_reset_between_batches(tmp_path):
    service = make_service(tmp_path, """
        def handle(data, context):
            if data is None:
                return None
            if data[0]["body"] == b"err":
                context.set_response_status(404, "Missing")
            return ["x" for _ in data]
    """)
    first, _ = service.predict([req("a", b"err")])
    second, _ = service.predict([req("b", b"fine")])
    assert first[0].code == 404 and second[0].code == 200


def test_request_ids_and_headers_are_visible_to_the_handler(tmp_path):
    service = make_service(tmp_path, """
        def handle(data, context):
            if data is None:
                return None
            return [{"id": context.get_request_id(i),
                     "auth": context.get_request_header(i, "authorization"),
                     "param": context.get_request_header(i, "body"),
                     "all": sorted(context.get_all_request_header(i))}
                    for i in range(len(data))]
    """)
    resps, _ = service.predict([
        req("r1", b"x", "text/plain", headers={"Authorization": "Bearer t", "X-A": "1"}),
        req("r2", b"y", "image/png"),
    ])
    one, two = (json.loads(r.value) for r in resps)
    assert one == {"id": "r1", "auth": "Bearer t", "param": {"content-type": "text/plain"},
                   "all": ["Authorization", "X-A", "body"]}
    assert two == {"id": "r2", "auth": None, "param": {"content-type": "image/png"},
                   "all": ["body"]}


# -- metrics -------------------------------------------------------------------------------

def test_handler_metrics_and_handler_time_are_returned_per_batch(tmp_path):
    service = make_service(tmp_path, """
        def handle(data, context):
            if data is None:
                context.metrics.add_counter("Loaded", 1)
                return None
            context.metrics.add_counter("Rows", len(data), dimensions={"Kind": "test"})
            context.metrics.add_time("Inner", 1.5)
            return ["x" for _ in data]
    """)
    _, metrics = service.predict([req("a", b"x"), req("b", b"y")])
    by_name = {m["name"]: m for m in metrics}
    assert set(by_name) == {"Loaded", "Rows", "Inner", "HandlerTime"}
    assert by_name["Rows"] == {"name": "Rows", "value": 2, "unit": "count", "type": "counter",
                               "dims": {"Kind": "test", "ModelName": "m", "Level": "Model"}}
    assert by_name["Inner"]["type"] == "gauge" and by_name["Inner"]["unit"] == "ms"
    handler_time = by_name["HandlerTime"]
    assert handler_time["unit"] == "ms" and handler_time["value"] >= 0
    _, again = service.predict([req("c", b"z")])
    assert sorted(m["name"] for m in again) == ["HandlerTime", "Inner", "Rows"]


# -- loading ------------------------------------------------------------------------------

def test_model_config_from_manifest_and_settings(tmp_path):
    source = """
        def handle(data, context):
            if data is None:
                return None
            return [context.model_yaml_config for _ in data]
    """
    manifest = {"model": {"modelName": "m", "handler": "h.py", "configFile": "model-config.yaml"}}
    service = make_service(tmp_path, source, manifest=manifest,
                           files={"model-config.yaml": "minWorkers: 2\nhandler:\n  k: v\n",
                                  "other.yaml": "x: 1\n"})
    resps, _ = service.predict([req("a", b"x")])
    assert json.loads(resps[0].value) == {"minWorkers": 2, "handler": {"k": "v"}}
    service = make_service(tmp_path, source, manifest=manifest, config_file="other.yaml")
    resps, _ = service.predict([req("a", b"x")])
    assert json.loads(resps[0].value) == {"x": 1}


def test_context_properties_at_load(tmp_path):
    service = make_service(tmp_path, """
        SEEN = {}
        def handle(data, context):
            if data is None:
                SEEN.update(context.system_properties, name=context.model_name,
                            manifest=context.manifest, config=context.model_yaml_config)
                return None
            return [SEEN for _ in data]
    """, gpu_id=None, batch_size=4, server_version="9.9", limit_max_image_pixels=False)
    seen = json.loads(service.predict([req("a", b"x")])[0][0].value)
    assert seen == {
        "model_dir": str((tmp_path / "model").resolve()), "gpu_id": None, "batch_size": 4,
        "server_name": "MMS", "server_version": "9.9", "limit_max_image_pixels": False,
        "name": "m", "manifest": {"model": {"modelName": "m", "handler": "h.py"}},
        "config": {},
    }


def test_workflow_manifest_gets_a_model_section(tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "WAR-INF").mkdir(parents=True)
    (model_dir / "WAR-INF" / "MANIFEST.json").write_text(json.dumps(
        {"workflow": {"workflowName": "wf", "specFile": "s.yaml", "handler": "wf_h.py"}}))
    service = make_service(tmp_path, """
        def pre(data, context):
            if data is None:
                return None
            return [context.manifest for _ in data]
    """, handler="wf_h:pre")
    manifest = json.loads(service.predict([req("a", b"x")])[0][0].value)
    assert manifest["workflow"]["workflowName"] == "wf"
    assert manifest["model"] == {"modelName": "m", "handler": "wf_h:pre"}


def test_missing_model_config_file_is_a_load_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        make_service(tmp_path, ECHO, config_file="nope.yaml")


def test_invalid_manifest_json_is_a_load_error(tmp_path):
    (tmp_path / "model" / "MAR-INF").mkdir(parents=True)
    (tmp_path / "model" / "MAR-INF" / "MANIFEST.json").write_text("{oops")
    with pytest.raises(ValueError, match="MANIFEST.json: invalid JSON"):
        make_service(tmp_path, ECHO)
