"""COMPAT.md audited item by item against the real server (§3, §4, §5, §6a, §7).

One server for most of the module (``main``): token auth off and the model API on through
config.properties keys, ``TS_*`` overrides through ``enable_envvars_config``, models loaded
with ``--models named=echo.mar keys.mar explainer.mar`` (several separate arguments).
One more, bare, server checks that ``dagserve --stop`` stops a ``--foreground`` server.

What the other API test modules already check is not repeated here. A statement dagserve
does not keep yet is an ``xfail(strict=True)`` test whose reason says what is wrong: it
turns into a failure (XPASS) the day it is fixed, so that the mark is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from server_utils import (ECHO_HANDLER, FAILING_INIT_HANDLER, REPO_ROOT, STARTED_LINE,
                          build_mar, build_war, pid_alive, start_server, wait_until)

TIMEOUT = 60
TEXT = {"Content-Type": "text/plain"}
RESOURCE_NOT_FOUND = "Requested resource is not found, please refer to API document."
METHOD_NOT_ALLOWED = "Requested method is not allowed, please refer to API document."
ENV_QUEUE_SIZE = 9  # TS_JOB_QUEUE_SIZE; config.properties says 5
ENV_MAX_REQUEST = 50000  # TS_MAX_REQUEST_SIZE; the default is 6553500

# -- handlers ----------------------------------------------------------------------------------

KEYS_HANDLER = '''\
"""Reports, per request, the names of the fields it received and the type of each value,
plus what the context says about the model and the request."""


def _kind(value):
    # bytes and bytearray are the same thing to a handler (COMPAT 6a)
    return "bytes" if isinstance(value, (bytes, bytearray)) else type(value).__name__


def _describe(data, context, tag):
    out = []
    for i, row in enumerate(data):
        out.append({"tag": tag,
                    "keys": {k: _kind(v) for k, v in row.items()},
                    "model_name": context.model_name,
                    "request_id": context.get_request_id(i),
                    "probe": context.get_request_header(i, "X-Probe"),
                    "props": sorted(context.system_properties)})
    return out


def handle(data, context):
    if data is None:
        return None
    return _describe(data, context, "handle")


def other(data, context):
    if data is None:
        return None
    return _describe(data, context, "other")
'''

RELAPSE_HANDLER = '''\
"""Loads once per unpacked model; every later load fails (so a killed worker never comes
back and the model stays below its minimum workers)."""
import os


def handle(data, context):
    if data is None:
        marker = os.path.join(context.system_properties["model_dir"], "loaded-once")
        if os.path.exists(marker):
            raise RuntimeError("this model loads only once")
        open(marker, "w").close()
        return None
    return [b"ok" for _ in data]
'''

EXPLAIN_HANDLER = '''\
"""A TorchServe-style BaseHandler whose explanations differ from its predictions."""
from ts.torch_handler.base_handler import BaseHandler


class Explainer(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def preprocess(self, data):
        return [row.get("body") for row in data]

    def inference(self, data, *args, **kwargs):
        return ["predicted" for _ in data]

    def postprocess(self, data):
        return data

    def get_insights(self, tensor_data, raw_data, target=0):
        return ["explained" for _ in tensor_data]
'''

WF_HANDLER = '''\
"""Function nodes for the compat workflows."""
import json


def _text(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode()
    return value if isinstance(value, str) else json.dumps(value)


def pre(data, context):
    if data is None:
        return None
    return ["pre(" + _text(row.get("body", row.get("data"))) + ")" for row in data]


def tagged(data, context):
    """Sets its own status and content type; says which fields it got."""
    if data is None:
        return None
    out = []
    for i, row in enumerate(data):
        context.set_response_status(201, "Created", i)
        context.set_response_content_type(i, "text/x-node")
        out.append("tagged[" + ",".join(sorted(row)) + "](" + _text(row.get("body")) + ")")
    return out


def as_list(data, context):
    if data is None:
        return None
    return [[1, 2, 3] for _ in data]


def as_text(data, context):
    if data is None:
        return None
    return ["plain text" for _ in data]
'''

# -- workflow specs ----------------------------------------------------------------------------

WARS = {
    # one model node: what the start node receives, and the node model's name
    "names": ("models:\n  keys:\n    url: keys.mar\ndag:\n  keys: []\n", ""),
    # the globals come after the model that they apply to
    "globals": (("models:\n  echo:\n    url: echo.mar\n  min-workers: 2\n  max-workers: 3\n"
                 "  batch-size: 4\n  max-batch-delay: 20\ndag:\n  echo: []\n"), ""),
    # a duplicate edge; the leaf sets status and content type
    "dup_status": ("models: {}\ndag:\n  pre: [tagged, tagged]\n", WF_HANDLER),
    "listy": ("models: {}\ndag:\n  pre: [as_list]\n", WF_HANDLER),
    "mixed": ("models: {}\ndag:\n  pre: [as_list, as_text]\n", WF_HANDLER),
    # a node whose model cannot load: the whole workflow is rolled back
    "rollback": (("models:\n  good:\n    url: echo.mar\n  bad:\n    url: broken.mar\n"
                  "dag:\n  good: [bad]\n"), ""),
}


# -- the server --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def main(tmp_path_factory):
    work = tmp_path_factory.mktemp("compat-main")
    store, wars, outside = work / "model_store", work / "wf_store", work / "outside"
    build_mar(store, "echo", ECHO_HANDLER)
    build_mar(store, "keys", KEYS_HANDLER)
    build_mar(store, "relapse", RELAPSE_HANDLER)
    build_mar(store, "broken", FAILING_INIT_HANDLER)
    build_mar(store, "explainer", EXPLAIN_HANDLER)
    build_mar(outside, "outside", ECHO_HANDLER)
    for name, (spec, handler) in WARS.items():
        build_war(wars, name, spec, handler)
    build_war(outside, "outside_wf", "models: {}\ndag:\n  pre: []\n", WF_HANDLER)
    config = {
        "model_store": str(store), "workflow_store": str(wars),
        "disable_token_authorization": True, "enable_model_api": True,
        "default_workers_per_model": 1,
        "allowed_urls": r"http://127\.0\.0\.1:1/ok\.mar,file://.*",
        "enable_envvars_config": True, "job_queue_size": 5,
    }
    env = {"TS_JOB_QUEUE_SIZE": str(ENV_QUEUE_SIZE), "TS_MAX_REQUEST_SIZE": str(ENV_MAX_REQUEST)}
    with start_server(work, config=config, env=env, timeout=120,
                      args=["--ncs", "--models", "named=echo.mar", "keys.mar",
                            "explainer.mar"]) as srv:
        srv.outside = outside  # type: ignore[attr-defined]
        yield srv


def infer(srv, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, srv.inference_url + path, timeout=TIMEOUT, **kw)


def mgmt(srv, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, srv.management_url + path, timeout=TIMEOUT, **kw)


def error(resp: requests.Response, status: int) -> str:
    """The message of a TorchServe error body, after checking status, code and shape."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == status, body
    assert set(body) == {"code", "type", "message"}, body
    assert resp.headers.get("x-request-id"), dict(resp.headers)
    return body["message"]


def status_of(resp: requests.Response, status: int = 200) -> str:
    assert resp.status_code == status, resp.text
    return resp.json()["status"]


@contextlib.contextmanager
def workflow(srv, war: str, name: str | None = None) -> Iterator[str]:
    """Register ``war`` (as ``name``) for the block, unregister it after."""
    params = {"url": war}
    if name:
        params["workflow_name"] = name
    resp = mgmt(srv, "POST", "/workflows", params=params)
    registered = name or war.removesuffix(".war")
    assert status_of(resp) == \
        f"Workflow {registered} has been registered and scaled successfully."
    try:
        yield registered
    finally:
        mgmt(srv, "DELETE", f"/workflows/{registered}")


@contextlib.contextmanager
def model(srv, url: str, name: str, **params) -> Iterator[str]:
    resp = mgmt(srv, "POST", "/models", params={"url": url, "model_name": name, **params})
    assert resp.status_code == 200, resp.text
    try:
        yield name
    finally:
        mgmt(srv, "DELETE", f"/models/{name}")


def ping(srv) -> requests.Response:
    return infer(srv, "GET", "/ping")


# -- §3 / §6a: health, request ids, error bodies ------------------------------------------------

def test_started_line_printed_once(main):
    assert main.output().count(STARTED_LINE) == 1, main.output()[-2000:]


def test_ping_is_exactly_healthy(main):
    resp = ping(main)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert json.loads(resp.content) == {"status": "Healthy"}


@pytest.mark.parametrize("app,method,path", [
    ("inference", "GET", "/ping"),
    ("inference", "POST", "/predictions/named"),
    ("inference", "OPTIONS", "/"),
    ("management", "GET", "/models"),
    ("management", "GET", "/workflows"),
    ("management", "OPTIONS", "/"),
    ("metrics", "GET", "/metrics"),
])
def test_successful_responses_carry_a_request_id(main, app, method, path):
    resp = requests.request(method, getattr(main, f"{app}_url") + path, data=b"x",
                            timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("x-request-id")


@pytest.mark.parametrize("app,method,path,params,status,message", [
    ("inference", "GET", "/no/such/path", None, 404, RESOURCE_NOT_FOUND),
    ("inference", "GET", "/predictions/named", None, 405, METHOD_NOT_ALLOWED),
    ("inference", "DELETE", "/ping", None, 405, METHOD_NOT_ALLOWED),
    ("inference", "POST", "/predictions/nope", None, 404, "Model not found: nope"),
    ("inference", "POST", "/predictions/named/9.9", None, 404,
     "Model version: 9.9 does not exist for model: named"),
    ("inference", "POST", "/explanations/nope", None, 404, "Model not found: nope"),
    ("inference", "POST", "/wfpredict/nope", None, 404, "Workflow not found: nope"),
    ("management", "GET", "/workflows/nope", None, 404, "Workflow not found: nope"),
    ("management", "DELETE", "/workflows/nope", None, 404, "Workflow not found: nope"),
    ("management", "POST", "/models", {}, 400, "Parameter url is required."),
    ("management", "POST", "/workflows", {}, 400, "Parameter url is required."),
    ("management", "POST", "/models", {"url": "echo.mar", "model_name": "named"}, 409,
     "Model version 1.0 is already registered for model named"),
    ("management", "POST", "/models", {"url": "../echo.mar"}, 404,
     "Relative path is not allowed in url: ../echo.mar"),
    ("management", "POST", "/workflows", {"url": "../names.war"}, 404,
     "Relative path is not allowed in url: ../names.war"),
    ("management", "PATCH", "/models", None, 405, METHOD_NOT_ALLOWED),
    ("management", "GET", "/no/such/path", None, 404, RESOURCE_NOT_FOUND),
    ("management", "PUT", "/models/named", {"min_worker": 3, "max_worker": 1}, 400, None),
    ("metrics", "GET", "/nope", None, 404, RESOURCE_NOT_FOUND),
])
def test_error_bodies_code_equals_status(main, app, method, path, params, status, message):
    resp = requests.request(method, getattr(main, f"{app}_url") + path, params=params,
                            timeout=TIMEOUT)
    text = error(resp, status)
    if message is not None:
        assert text == message


def test_body_over_max_request_size_from_env_is_413(main):
    assert infer(main, "POST", "/predictions/named", data=b"y" * (ENV_MAX_REQUEST - 10000),
                 headers=TEXT).status_code == 200
    error(infer(main, "POST", "/predictions/named", data=b"y" * (ENV_MAX_REQUEST + 10000)), 413)
    error(infer(main, "POST", "/wfpredict/nope", data=b"y" * (ENV_MAX_REQUEST + 10000)), 404)


def test_form_and_multipart_bodies_over_max_request_size_are_413(main):
    big = b"z" * (ENV_MAX_REQUEST + 10000)
    error(infer(main, "POST", "/predictions/named", data={"data": big.decode()}), 413)
    error(infer(main, "POST", "/predictions/named", files={"data": ("big.bin", big)}), 413)


def test_malformed_multipart_is_a_client_error(main):
    resp = infer(main, "POST", "/predictions/named", data=b"--x\r\n",
                 headers={"Content-Type": "multipart/form-data"})
    assert 400 <= resp.status_code < 500, resp.text
    error(resp, resp.status_code)


def test_job_queue_size_from_env_overrides_the_file(main):
    [d] = mgmt(main, "GET", "/models/named").json()
    assert d["jobQueueStatus"] == {"remainingCapacity": ENV_QUEUE_SIZE, "pendingRequests": 0}


# -- §6: --models with several arguments, default_workers_per_model ------------------------------

def test_models_flag_takes_several_arguments_with_names(main):
    listed = {m["modelName"]: m["modelUrl"] for m in mgmt(main, "GET", "/models").json()["models"]}
    expected = {"named": "echo.mar", "keys": "keys.mar", "explainer": "explainer.mar"}
    assert {name: listed.get(name) for name in expected} == expected
    assert "echo" not in listed  # name=url: loaded under the given name only
    for name in expected:
        [d] = mgmt(main, "GET", f"/models/{name}").json()
        assert d["loadedAtStartup"] is True
        assert d["minWorkers"] == 1  # default_workers_per_model=1
        assert [w["status"] for w in d["workers"]] == ["READY"]


# -- §2 / §6a: what a handler receives and what reaches the client --------------------------------

def test_fields_reach_the_handler_under_their_names(main):
    def keys(resp: requests.Response) -> dict:
        assert resp.status_code == 200, resp.text
        return resp.json()["keys"]

    path = "/predictions/keys"
    assert keys(infer(main, "POST", path, data=b"raw", headers=TEXT)) == {"body": "str"}
    assert keys(infer(main, "PUT", path, data=b"raw")) == {"body": "bytes"}
    assert keys(infer(main, "POST", path, data={"data": "form"})) == {"data": "bytes"}
    assert keys(infer(main, "PUT", path, data={"data": "form"})) == {"data": "bytes"}
    assert keys(infer(main, "POST", path,
                      files={"data": ("a.bin", b"\x00\x01", "application/octet-stream")})) == \
        {"data": "bytes"}
    assert keys(infer(main, "POST", path, files={"data": ("a.txt", b"t", "text/plain")})) == \
        {"data": "str"}
    assert keys(infer(main, "POST", path, data=b'{"a": 1}',
                      headers={"Content-Type": "application/json"})) == {"body": "dict"}
    # application/json that does not parse stays bytes
    assert keys(infer(main, "POST", path, data=b"{not json",
                      headers={"Content-Type": "application/json"})) == {"body": "bytes"}


def test_context_through_the_server(main):
    resp = infer(main, "POST", "/predictions/keys", data=b"x", headers={"X-Probe": "probe!"})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["model_name"] == "keys"
    assert out["probe"] == "probe!"
    assert out["request_id"] == resp.headers["x-request-id"]
    assert {"model_dir", "gpu_id", "batch_size", "server_name", "server_version",
            "limit_max_image_pixels"} <= set(out["props"])


def test_no_content_type_is_sent_when_the_handler_set_none(main):
    resp = infer(main, "POST", "/predictions/named", data=b"\x00raw")
    assert resp.content == b"\x00raw"
    assert "Content-Type" not in resp.headers


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_upload_file(main, tmp_path):
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"uploaded with curl -T")
    out = subprocess.run(["curl", "-sS", "-T", str(upload), main.inference_url +
                          "/predictions/named"], capture_output=True, timeout=TIMEOUT, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"uploaded with curl -T"


def test_explanations_reach_explain_handle(main):
    for method in ("POST", "PUT"):
        assert infer(main, method, "/predictions/explainer", data=b"x").text == "predicted"
        assert infer(main, method, "/explanations/explainer", data=b"x").text == "explained"
        assert infer(main, method, "/explanations/explainer/1.0", data=b"x").text == "explained"


# -- §4: registration details --------------------------------------------------------------------

def test_register_with_a_handler_override(main):
    with model(main, "keys.mar", "keys_other", handler="handler:other", initial_workers=1):
        resp = infer(main, "POST", "/predictions/keys_other", data=b"x")
        assert resp.json()["tag"] == "other"
        assert resp.json()["model_name"] == "keys_other"


def test_allowed_urls_must_match_the_whole_url(main):
    for url in ("http://127.0.0.1:1/ok.mar.evil", "http://127.0.0.1:1/ok.mar/x",
                "https://127.0.0.1:1/ok.mar", "http://127.0.0.1:1/ok.mars"):
        assert error(mgmt(main, "POST", "/models", params={"url": url}), 404) == \
            f"Given URL {url} does not match any allowed URL(s)"
    # the exact URL passes the check; the download then fails (nothing listens on port 1)
    error(mgmt(main, "POST", "/models", params={"url": "http://127.0.0.1:1/ok.mar"}), 400)


@pytest.mark.parametrize("kind,archive", [("models", "outside.mar"),
                                          ("workflows", "outside_wf.war")])
def test_absolute_path_does_not_escape_the_store(main, kind, archive):
    url = str(main.outside / archive)
    resp = mgmt(main, "POST", f"/{kind}", params={"url": url})
    try:
        assert resp.status_code == 404, resp.text
        assert resp.json()["code"] == 404
    finally:
        if resp.status_code == 200:
            name = "outside" if kind == "models" else "outside_wf"
            mgmt(main, "DELETE", f"/{kind}/{name}")


def test_model_scaled_to_zero_has_no_worker(main):
    with model(main, "echo.mar", "zero", initial_workers=1):
        resp = mgmt(main, "PUT", "/models/zero", params={"min_worker": 0, "synchronous": "true"})
        assert resp.status_code == 200, resp.text
        assert error(infer(main, "POST", "/predictions/zero", data=b"x"), 503) == \
            ('Model "zero" has no worker to serve inference request. '
             'Please use scale workers API to add workers.')
        assert ping(main).status_code == 200  # 0 workers is its minimum: healthy


# -- §7 (issue 17): /ping is liveness; ?ready=true reports a model short of its workers --------------

def test_ping_stays_healthy_while_a_model_lacks_workers_and_readiness_says_so(main):
    with model(main, "relapse.mar", "relapse", initial_workers=1):
        assert ping(main).status_code == 200
        assert infer(main, "GET", "/ping", params={"ready": "true"}).status_code == 200
        [d] = mgmt(main, "GET", "/models/relapse").json()
        [worker] = d["workers"]
        os.kill(worker["pid"], signal.SIGKILL)
        ready = lambda: infer(main, "GET", "/ping", params={"ready": "true"})  # noqa: E731
        assert wait_until(lambda: ready().status_code == 503, 15)
        body = ready().json()
        assert body["status"] == "Not Ready"
        assert [m["modelName"] for m in body["loading"]] == ["relapse"]
        # its restarts keep failing: liveness stays Healthy, the other models keep serving
        resp = ping(main)
        assert (resp.status_code, resp.json()) == (200, {"status": "Healthy"})
        assert resp.headers.get("x-request-id")
        assert infer(main, "POST", "/predictions/named", data=b"still").content == b"still"
    assert ping(main).json() == {"status": "Healthy"}
    assert infer(main, "GET", "/ping", params={"ready": "true"}).json() == {"status": "Ready"}


# -- §5 / §6a / §7: workflows ----------------------------------------------------------------------

def test_start_node_receives_data_or_body_and_node_model_name(main):
    for registered_as in (None, "renamed"):
        with workflow(main, "names.war", registered_as) as name:
            url = f"/wfpredict/{name}"
            raw = infer(main, "POST", url, data=b"raw", headers=TEXT).json()
            assert raw["keys"] == {"body": "str"}
            assert raw["model_name"] == f"{name}__keys"
            assert infer(main, "PUT", url, data=b"put").json()["keys"] == {"body": "bytes"}
            assert infer(main, "POST", url, data={"data": "form"}).json()["keys"] == \
                {"data": "bytes"}
            assert infer(main, "PUT", url, data={"data": "form"}).json()["keys"] == \
                {"data": "bytes"}
            multi = infer(main, "POST", url, files={"data": ("a.txt", b"m", "text/plain")})
            assert multi.json()["keys"] == {"data": "str"}
            described = mgmt(main, "GET", f"/models/{name}__keys").json()
            assert described[0]["modelName"] == f"{name}__keys"


def test_globals_after_the_model_apply_and_are_reported(main):
    with workflow(main, "globals.war") as name:
        [desc] = mgmt(main, "GET", f"/workflows/{name}").json()
        assert desc["workflowName"] == "globals" and desc["workflowUrl"] == "globals.war"
        assert (desc["minWorkers"], desc["maxWorkers"], desc["batchSize"],
                desc["maxBatchDelay"]) == (2, 3, 4, 20)
        assert "workflowDag" in desc
        [node] = mgmt(main, "GET", f"/models/{name}__echo").json()
        assert (node["minWorkers"], node["maxWorkers"], node["batchSize"],
                node["maxBatchDelay"]) == (2, 3, 4, 20)
        assert [w["status"] for w in node["workers"]] == ["READY", "READY"]
        assert infer(main, "POST", f"/wfpredict/{name}", data=b"g").content == b"g"


def test_duplicate_edge_merged_and_leaf_status_and_content_type_kept(main):
    with workflow(main, "dup_status.war") as name:
        resp = infer(main, "POST", f"/wfpredict/{name}", data=b"hello", headers=TEXT)
        assert resp.status_code == 201, resp.text
        assert resp.headers["Content-Type"].startswith("text/x-node")
        assert resp.text == "tagged[body](pre(hello))"
        assert resp.headers.get("x-request-id")


def test_leaf_returning_a_list_or_text_is_returned(main):
    with workflow(main, "listy.war") as name:
        resp = infer(main, "POST", f"/wfpredict/{name}", data=b"x", headers=TEXT)
        assert resp.status_code == 200, resp.text
        assert resp.json() == [1, 2, 3]
    with workflow(main, "mixed.war") as name:
        resp = infer(main, "POST", f"/wfpredict/{name}", data=b"x", headers=TEXT)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"as_list": [1, 2, 3], "as_text": "plain text"}


def test_node_that_cannot_load_rolls_the_workflow_back(main):
    before = {m["modelName"] for m in mgmt(main, "GET", "/models").json()["models"]}
    message = error(mgmt(main, "POST", "/workflows", params={"url": "rollback.war"}), 500)
    assert message.startswith("Workflow rollback has failed to register. Failures: [")
    assert "bad" in message
    assert error(mgmt(main, "GET", "/workflows/rollback"), 404) == "Workflow not found: rollback"
    for node in ("good", "bad"):
        assert mgmt(main, "GET", f"/models/rollback__{node}").status_code == 404
    assert {m["modelName"] for m in mgmt(main, "GET", "/models").json()["models"]} == before


def test_workflow_unregister_message_and_node_models_go(main):
    with workflow(main, "listy.war", "short_lived") as name:
        assert mgmt(main, "GET", f"/models/{name}__pre").status_code == 200
        assert status_of(mgmt(main, "DELETE", f"/workflows/{name}")) == \
            f'Workflow "{name}" unregistered'
    assert error(mgmt(main, "GET", "/models/short_lived__pre"), 404) == \
        "Model not found: short_lived__pre"
    assert error(infer(main, "POST", "/wfpredict/short_lived", data=b"x"), 404) == \
        "Workflow not found: short_lived"


@pytest.mark.parametrize("bad", ["bad/name", "has space", "-dash-first"])
def test_invalid_workflow_name_is_a_bad_request(main, bad):
    resp = mgmt(main, "POST", "/workflows", params={"url": "listy.war", "workflow_name": bad})
    try:
        assert "workflow_name" in error(resp, 400)
    finally:
        if resp.status_code == 200:
            mgmt(main, "DELETE", "/workflows/" + requests.utils.quote(bad, safe=""))
            names = [w["workflowName"] for w in mgmt(main, "GET", "/workflows").json()["workflows"]]
            assert bad not in names, "could not clean up"


def test_workflow_list_last_page_has_no_token(main):
    with workflow(main, "listy.war", "page_one"):
        body = mgmt(main, "GET", "/workflows").json()
        assert "page_one" in [w["workflowName"] for w in body["workflows"]]
        assert len(body["workflows"]) < 100  # everything fits on this page
        assert "nextPageToken" not in body


# -- §6a: dagserve --stop stops a --foreground server -------------------------------------------

def test_stop_stops_a_foreground_server(tmp_path):
    server = start_server(tmp_path, args=["--disable-token-auth", "--ncs"], timeout=60)
    try:
        assert server.output().count(STARTED_LINE) == 1
        workers = server.worker_pids()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["TMPDIR"] = str(tmp_path / "tmp")  # as start_server gave the server
        script = Path(sys.executable).with_name("dagserve")
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "dagserve.engine.cli"]
        out = subprocess.run([*cmd, "--stop"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=TIMEOUT, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert server.proc.wait(TIMEOUT) is not None
        assert wait_until(lambda: not any(pid_alive(p) for p in workers), 10)
    finally:
        server.stop()
