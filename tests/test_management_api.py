"""The management API against the real server (COMPAT §4, §6 token auth, §6a).

Two servers for the module: ``srv`` with token authorization (the default) and the model API
enabled, allowed_urls limited to a local HTTP server; ``locked`` with token auth disabled and
the model API off.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
import requests

from server_utils import (ECHO_HANDLER, FAILING_INIT_HANDLER, build_mar, build_war,
                          pid_alive, start_server, wait_until)

TIMEOUT = 60


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving a directory with ``remote.mar``."""
    root = tmp_path_factory.mktemp("remote")
    build_mar(root, "remote", ECHO_HANDLER)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("model_store")
    build_mar(path, "echo", ECHO_HANDLER)
    build_mar(path, "echo", ECHO_HANDLER, version="2.0", export_name="echo_v2.mar")
    build_mar(path, "broken", FAILING_INIT_HANDLER)
    return path


@pytest.fixture(scope="module")
def srv(tmp_path_factory, store, remote):
    work = tmp_path_factory.mktemp("srv")
    port = remote.rsplit(":", 1)[1]
    config = {"allowed_urls": rf"http://127\.0\.0\.1:{port}/.*,file://.*"}
    with start_server(work, model_store=store, args=["--enable-model-api"],
                      config=config) as server:
        yield server


@pytest.fixture(scope="module")
def locked(tmp_path_factory, store):
    work = tmp_path_factory.mktemp("locked")
    with start_server(work, model_store=store, args=["--disable-token-auth"]) as server:
        yield server


class Client:
    """requests with the server's current management / inference keys."""

    def __init__(self, server):
        self.server = server

    def mgmt(self, method: str, path: str, **kw) -> requests.Response:
        headers = {**self.server.auth("management"), **kw.pop("headers", {})}
        return requests.request(method, self.server.management_url + path, headers=headers,
                                timeout=TIMEOUT, **kw)

    def infer(self, method: str, path: str, **kw) -> requests.Response:
        headers = {**self.server.auth("inference"), **kw.pop("headers", {})}
        return requests.request(method, self.server.inference_url + path, headers=headers,
                                timeout=TIMEOUT, **kw)

    def register(self, **params) -> requests.Response:
        return self.mgmt("POST", "/models", params=params)


@pytest.fixture(scope="module")
def api(srv) -> Client:
    return Client(srv)


def error(resp: requests.Response, status: int) -> str:
    """The message of a TorchServe-shaped error body, after checking its status and code."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == status
    assert set(body) == {"code", "type", "message"}
    return body["message"]


def status_of(resp: requests.Response, status: int = 200) -> str:
    assert resp.status_code == status, resp.text
    return resp.json()["status"]


# -- register / describe ---------------------------------------------------------------------

def test_register_synchronous_then_describe_and_predict(api):
    resp = api.register(url="echo.mar", initial_workers=1)
    assert status_of(resp) == 'Model "echo" Version: 1.0 registered with 1 initial workers'

    desc = api.mgmt("GET", "/models/echo").json()
    assert isinstance(desc, list) and len(desc) == 1
    d = desc[0]
    for key in ("modelName", "modelVersion", "modelUrl", "runtime", "minWorkers", "maxWorkers",
                "batchSize", "maxBatchDelay", "responseTimeout", "deviceType",
                "loadedAtStartup", "workers", "jobQueueStatus"):
        assert key in d, key
    assert (d["modelName"], d["modelVersion"], d["modelUrl"]) == ("echo", "1.0", "echo.mar")
    assert (d["minWorkers"], d["maxWorkers"], d["runtime"]) == (1, 1, "python")
    assert d["deviceType"] == "cpu" and d["loadedAtStartup"] is False
    assert d["responseTimeout"] == 120
    assert d["jobQueueStatus"] == {"remainingCapacity": 100, "pendingRequests": 0}
    [worker] = d["workers"]
    assert worker["status"] == "READY"
    assert worker["gpu"] is False
    assert pid_alive(worker["pid"])
    assert worker["memoryUsage"] > 1 << 20  # a Python process: bytes, not kB
    started = datetime.strptime(worker["startTime"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert started.year >= 2024

    assert api.infer("POST", "/predictions/echo", data=b"ping").content == b"ping"


def test_register_same_version_again_is_a_conflict(api):
    api.register(url="echo.mar", model_name="again", initial_workers=0)
    resp = api.register(url="echo.mar", model_name="again", initial_workers=0)
    assert error(resp, 409) == "Model version 1.0 is already registered for model again"


def test_two_concurrent_registrations_exactly_one_wins(api, srv):
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: api.register(url="echo.mar", model_name="twin",
                                                       initial_workers=1), range(2)))
    assert sorted(r.status_code for r in results) == [200, 409]
    assert len(api.mgmt("GET", "/models/twin/all").json()) == 1
    assert len([p for p in srv.unpacked_models() if p.name.startswith("echo-")]) == \
        len([d for d in _all_descriptions(api) if d["modelUrl"] == "echo.mar"])


def _all_descriptions(api) -> list[dict]:
    out = []
    for item in api.mgmt("GET", "/models").json()["models"]:
        out += api.mgmt("GET", f"/models/{item['modelName']}/all").json()
    return out


def test_register_with_json_body_and_zero_workers(api):
    resp = api.mgmt("POST", "/models", json={"url": "echo.mar", "model_name": "jsonecho",
                                             "batch_size": 4, "max_batch_delay": 7,
                                             "response_timeout": 30})
    assert status_of(resp) == ('Model "jsonecho" Version: 1.0 registered with 0 initial '
                               'workers. Use scale workers API to add workers for the model.')
    [d] = api.mgmt("GET", "/models/jsonecho").json()
    assert (d["batchSize"], d["maxBatchDelay"], d["responseTimeout"]) == (4, 7, 30)
    assert d["workers"] == [] and d["minWorkers"] == 0
    msg = error(api.infer("POST", "/predictions/jsonecho", data=b"x"), 503)
    assert msg == ('Model "jsonecho" has no worker to serve inference request. '
                   'Please use scale workers API to add workers.')


def test_register_asynchronously(api):
    resp = api.register(url="echo.mar", model_name="later", initial_workers=1,
                        synchronous="false")
    assert status_of(resp, 202) == "Processing worker updates..."

    def ready() -> bool:
        [d] = api.mgmt("GET", "/models/later").json()
        return [w["status"] for w in d["workers"]] == ["READY"]

    assert wait_until(ready, 30)
    assert api.infer("POST", "/predictions/later", data=b"late").content == b"late"


def test_register_needs_url(api):
    assert error(api.register(model_name="x"), 400) == "Parameter url is required."


@pytest.mark.parametrize("params, name", [
    ({"batch_size": "abc"}, "batch_size"),
    ({"max_batch_delay": "1.5"}, "max_batch_delay"),
    ({"initial_workers": "-1"}, "initial_workers"),
    ({"response_timeout": "soon"}, "response_timeout"),
    ({"synchronous": "maybe"}, "synchronous"),
    ({"model_name": "bad/name"}, "model_name"),
])
def test_register_rejects_bad_parameters(api, params, name):
    message = error(api.register(url="echo.mar", **params), 400)
    assert name in message


def test_url_checks(api):
    assert error(api.register(url="../echo.mar"), 404) == \
        "Relative path is not allowed in url: ../echo.mar"
    assert error(api.register(url="http://localhost:9/x.mar"), 404) == \
        "Given URL http://localhost:9/x.mar does not match any allowed URL(s)"
    assert "nope.mar" in error(api.register(url="nope.mar"), 404)


def test_register_from_an_allowed_http_url(api, remote):
    resp = api.register(url=f"{remote}/remote.mar", initial_workers=1)
    assert status_of(resp) == 'Model "remote" Version: 1.0 registered with 1 initial workers'
    [d] = api.mgmt("GET", "/models/remote").json()
    assert d["modelUrl"] == f"{remote}/remote.mar"
    assert api.infer("POST", "/predictions/remote", data=b"far").content == b"far"


def test_download_failure_is_a_bad_request(api, remote):
    message = error(api.register(url=f"{remote}/missing.mar"), 400)
    assert "missing.mar" in message
    assert api.mgmt("GET", "/models/missing").status_code == 404


def test_failed_registration_leaves_nothing_behind(api, srv):
    workers_before = set(srv.worker_pids())
    resp = api.register(url="broken.mar", initial_workers=1)
    assert error(resp, 500).startswith("Failed to start workers for model broken version: 1.0")
    assert error(api.mgmt("GET", "/models/broken"), 404) == "Model not found: broken"
    assert wait_until(lambda: set(srv.worker_pids()) <= workers_before, 10)
    assert not [p for p in srv.unpacked_models() if p.name.startswith("broken")]
    # and the name is free again (the failed attempt released it)
    again = api.register(url="broken.mar", initial_workers=0)
    assert again.status_code == 200, again.text
    assert api.mgmt("DELETE", "/models/broken").status_code == 200


# -- scale -----------------------------------------------------------------------------------

def _ready_workers(api, path: str) -> int:
    [d] = api.mgmt("GET", path).json()
    return sum(w["status"] == "READY" for w in d["workers"])


def test_scale_workers(api):
    api.register(url="echo.mar", model_name="scaled", initial_workers=0)
    resp = api.mgmt("PUT", "/models/scaled", params={"min_worker": 2, "synchronous": "true"})
    assert status_of(resp) == "Workers scaled to 2 for model: scaled"
    [d] = api.mgmt("GET", "/models/scaled").json()
    assert (d["minWorkers"], d["maxWorkers"]) == (2, 2)
    assert _ready_workers(api, "/models/scaled") == 2

    resp = api.mgmt("PUT", "/models/scaled/1.0",
                    params={"min_worker": 1, "max_worker": 3, "synchronous": "true"})
    assert status_of(resp) == "Workers scaled to 1 for model: scaled, version: 1.0"
    [d] = api.mgmt("GET", "/models/scaled").json()
    assert (d["minWorkers"], d["maxWorkers"]) == (1, 3)
    assert _ready_workers(api, "/models/scaled") == 1

    resp = api.mgmt("PUT", "/models/scaled", params={"min_worker": 0})
    assert status_of(resp, 202) == "Processing worker updates..."
    assert wait_until(lambda: _ready_workers(api, "/models/scaled") == 0, 20)


def test_scale_errors(api):
    api.register(url="echo.mar", model_name="scale_err", initial_workers=0)
    resp = api.mgmt("PUT", "/models/scale_err", params={"min_worker": 3, "max_worker": 1})
    assert error(resp, 400) == "max_worker cannot be less than min_worker."
    assert "min_worker" in error(api.mgmt("PUT", "/models/scale_err",
                                          params={"min_worker": "two"}), 400)
    assert "timeout" in error(api.mgmt("PUT", "/models/scale_err",
                                       params={"min_worker": 0, "timeout": "x"}), 400)
    assert error(api.mgmt("PUT", "/models/nope", params={"min_worker": 1}), 404) == \
        "Model not found: nope"
    assert error(api.mgmt("PUT", "/models/scale_err/9.9", params={"min_worker": 1}), 404) == \
        "Model version: 9.9 does not exist for model: scale_err"


# -- versions, default version, unregister -----------------------------------------------------

def test_versions_default_version_and_unregister(api):
    assert api.register(url="echo.mar", model_name="ver").status_code == 200
    assert api.register(url="echo_v2.mar", model_name="ver").status_code == 200
    versions = api.mgmt("GET", "/models/ver/all").json()
    assert sorted(d["modelVersion"] for d in versions) == ["1.0", "2.0"]
    assert api.mgmt("GET", "/models/ver").json()[0]["modelVersion"] == "1.0"
    assert api.mgmt("GET", "/models/ver/2.0").json()[0]["modelVersion"] == "2.0"
    assert error(api.mgmt("GET", "/models/ver/3.0"), 404) == \
        "Model version: 3.0 does not exist for model: ver"

    for path in ("/models/ver", "/models/ver/1.0"):
        assert error(api.mgmt("DELETE", path), 403) == "Cannot remove default version for model ver"

    resp = api.mgmt("PUT", "/models/ver/2.0/set-default")
    assert status_of(resp) == 'Default version successfully updated for model "ver" to "2.0"'
    assert api.mgmt("GET", "/models/ver").json()[0]["modelVersion"] == "2.0"
    assert error(api.mgmt("PUT", "/models/ver/7.0/set-default"), 404) == \
        "Model version 7.0 does not exist for model ver"
    assert error(api.mgmt("PUT", "/models/none/1.0/set-default"), 404) == \
        "Model not found: none"

    assert status_of(api.mgmt("DELETE", "/models/ver/1.0")) == 'Model "ver" unregistered'
    assert status_of(api.mgmt("DELETE", "/models/ver")) == 'Model "ver" unregistered'
    assert error(api.mgmt("GET", "/models/ver"), 404) == "Model not found: ver"
    assert error(api.mgmt("DELETE", "/models/ver"), 404) == "Model not found: ver"


def test_unregister_stops_the_workers(api, srv):
    api.register(url="echo.mar", model_name="gone", initial_workers=1)
    [d] = api.mgmt("GET", "/models/gone").json()
    pid = d["workers"][0]["pid"]
    assert status_of(api.mgmt("DELETE", "/models/gone")) == 'Model "gone" unregistered'
    assert wait_until(lambda: not pid_alive(pid), 10)
    assert error(api.infer("POST", "/predictions/gone", data=b"x"), 404) == \
        "Model not found: gone"


# -- list --------------------------------------------------------------------------------------

def test_list_models_sorted_and_paginated(api):
    for name in ("page_c", "page_a", "page_b"):
        api.register(url="echo.mar", model_name=name)
    everything = api.mgmt("GET", "/models").json()
    names = [m["modelName"] for m in everything["models"]]
    assert names == sorted(names) and {"page_a", "page_b", "page_c"} <= set(names)
    assert "nextPageToken" not in everything
    assert all(set(m) == {"modelName", "modelUrl"} for m in everything["models"])

    first = api.mgmt("GET", "/models", params={"limit": 2}).json()
    assert [m["modelName"] for m in first["models"]] == names[:2]
    assert first["nextPageToken"] == "2"
    second = api.mgmt("GET", "/models",
                      params={"limit": 2, "next_page_token": first["nextPageToken"]}).json()
    assert [m["modelName"] for m in second["models"]] == names[2:4]
    capped = api.mgmt("GET", "/models", params={"limit": 1000}).json()
    assert [m["modelName"] for m in capped["models"]] == names
    assert "limit" in error(api.mgmt("GET", "/models", params={"limit": "many"}), 400)


# -- workflow node models ----------------------------------------------------------------------

def test_workflow_node_models_cannot_be_scaled_or_deleted_alone(api, srv, store):
    pytest.importorskip("dagserve.engine.workflow_manager")
    spec = ("models:\n  min-workers: 1\n  max-workers: 1\n"
            "  first:\n    url: echo.mar\n  second:\n    url: echo.mar\n"
            "dag:\n  first: [second]\n")
    build_war(store, "chain", spec)
    resp = api.mgmt("POST", "/workflows", params={"url": "chain.war"})
    assert resp.status_code == 200, resp.text
    try:
        assert error(api.mgmt("DELETE", "/models/chain__first"), 409).startswith(
            "Model chain__first belongs to workflow chain")
        assert error(api.mgmt("PUT", "/models/chain__second", params={"min_worker": 2}),
                     409).startswith("Model chain__second belongs to workflow chain")
        assert _ready_workers(api, "/models/chain__second") == 1
        assert api.infer("POST", "/wfpredict/chain", data=b"through").content == b"through"
    finally:
        assert api.mgmt("DELETE", "/workflows/chain").status_code == 200


# -- routing, OpenAPI, token authorization -----------------------------------------------------

def test_unknown_paths_and_methods(api):
    assert error(api.mgmt("GET", "/nothing/here"), 404) == \
        "Requested resource is not found, please refer to API document."
    assert error(api.mgmt("PATCH", "/models"), 405) == \
        "Requested method is not allowed, please refer to API document."


def test_options_describes_the_api_without_a_token(srv):
    resp = requests.options(srv.management_url + "/", timeout=TIMEOUT)
    assert resp.status_code == 200
    assert "/models/{model_name}" in resp.json()["paths"]
    assert requests.options(srv.inference_url + "/", timeout=TIMEOUT).status_code == 200


TOKEN_FAILED = ("Token Authorization failed. Token either incorrect, expired, or not provided "
                "correctly")


def test_token_authorization(srv):
    mgmt, infer = srv.management_url, srv.inference_url
    assert error(requests.get(mgmt + "/models", timeout=TIMEOUT), 400) == TOKEN_FAILED
    wrong = {"Authorization": "Bearer not-the-key"}
    assert error(requests.get(mgmt + "/models", headers=wrong, timeout=TIMEOUT), 400) == \
        TOKEN_FAILED
    # the inference key does not open the management API, nor the reverse
    assert requests.get(mgmt + "/models", headers=srv.auth("inference"),
                        timeout=TIMEOUT).status_code == 400
    assert requests.get(infer + "/ping", headers=srv.auth("management"),
                        timeout=TIMEOUT).status_code == 400
    assert error(requests.get(infer + "/ping", timeout=TIMEOUT), 400) == TOKEN_FAILED
    assert requests.get(infer + "/ping", headers=srv.auth("inference"),
                        timeout=TIMEOUT).status_code == 200
    assert requests.get(mgmt + "/models", headers=srv.auth("management"),
                        timeout=TIMEOUT).status_code == 200
    # the metrics API needs no token
    assert requests.get(srv.metrics_url + "/metrics", timeout=TIMEOUT).status_code == 200


def test_token_endpoint_replaces_a_key(srv):
    old = srv.auth("management")
    resp = requests.get(srv.management_url + "/token", params={"type": "management"},
                        headers=srv.auth("API"), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    new = srv.auth("management")
    assert new != old
    assert requests.get(srv.management_url + "/models", headers=old,
                        timeout=TIMEOUT).status_code == 400
    assert requests.get(srv.management_url + "/models", headers=new,
                        timeout=TIMEOUT).status_code == 200
    # without the API key the endpoint refuses
    resp = requests.get(srv.management_url + "/token", params={"type": "management"},
                        headers=new, timeout=TIMEOUT)
    assert error(resp, 400) == TOKEN_FAILED


# -- model API disabled, token auth disabled ---------------------------------------------------

def test_model_api_disabled_refuses_register_and_delete(locked):
    api = Client(locked)
    assert locked.auth() == {}  # --disable-token-auth: no key file, no token needed
    assert error(api.register(url="echo.mar"), 405) == \
        "Requested method is not allowed, please refer to API document."
    assert error(api.mgmt("DELETE", "/models/echo"), 405) == \
        "Requested method is not allowed, please refer to API document."
    assert api.mgmt("GET", "/models").json() == {"models": []}
    assert error(api.mgmt("PUT", "/models/echo", params={"min_worker": 1}), 404) == \
        "Model not found: echo"
    assert requests.get(locked.inference_url + "/ping", timeout=TIMEOUT).status_code == 200


SLEEP_HANDLER = '''\
import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(1.0)
    return ["slept" for _ in data]
'''


def test_scaling_down_lets_busy_workers_finish_their_batch(api, store):
    build_mar(store, "sleeper", SLEEP_HANDLER)
    assert api.register(url="sleeper.mar", initial_workers=2, synchronous="true").status_code == 200
    url = api.server.inference_url + "/predictions/sleeper"
    headers = api.server.auth("inference")
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(requests.post, url, data=b"x", headers=headers, timeout=30)
                   for _ in range(2)]
        time.sleep(0.3)  # both workers now hold a request
        resp = api.mgmt("PUT", "/models/sleeper", params={"min_worker": 1, "synchronous": "true"})
        assert resp.status_code == 200, resp.text
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert _ready_workers(api, "/models/sleeper") == 1
