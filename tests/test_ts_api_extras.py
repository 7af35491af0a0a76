"""TorchServe 0.12 API details against one real server: ``/predictions/{m}/{v}/<path>``
(the rest of the path reaches the handler as ``url_path``), ``GET /api-description`` on both
ports, ``OPTIONS /predictions/{m}``, describe ``?customized=true``, ``POST /workflows``
``response_timeout``, model-config ``jobQueueSize``/``deviceType`` and the warning for its
unsupported keys, ``unregister_model_timeout`` (a running request finishes),
``blacklist_env_vars`` (kept from workers) and ``disable_system_metrics``."""

from __future__ import annotations

import json
import threading
import zipfile
import time

import pytest
import requests

from server_utils import build_mar, build_war, start_server

TIMEOUT = 30

PATH_HANDLER = '''\
import os
import time


def handle(data, context):
    if data is None:
        return None
    if context.get_request_header(0, "describe") == "True":
        return [{"about": "reports its url_path"}]
    out = []
    for i, row in enumerate(data):
        body = bytes(row.get("body") or b"")
        if body == b"slow":
            time.sleep(1.5)
        out.append({"url_path": context.get_request_header(i, "url_path"),
                    "secret": os.environ.get("DROPIN_SECRET_TOKEN"),
                    "visible": os.environ.get("DROPIN_VISIBLE")})
    return out
'''

MODEL_CONFIG = "jobQueueSize: 3\ndeviceType: cpu\nmaxRetryTimeoutInSec: 5\nparallelType: pp\n"

WF_SPEC = """\
models:
  echo:
    url: pathecho.mar
dag:
  pre: [echo]
"""
WF_HANDLER = "def pre(data, context):\n    return None if data is None else [b'x' for _ in data]\n"


def _without_handler(mar) -> None:
    """Drop ``model.handler`` from the archive's manifest (the handler file stays)."""
    with zipfile.ZipFile(mar) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    manifest = json.loads(files["MAR-INF/MANIFEST.json"])
    del manifest["model"]["handler"]
    files["MAR-INF/MANIFEST.json"] = json.dumps(manifest, indent=2).encode()
    with zipfile.ZipFile(mar, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("api-extras")
    store = work / "model_store"
    build_mar(store, "pathecho", PATH_HANDLER, config_yaml=MODEL_CONFIG)
    build_mar(store, "slowecho", PATH_HANDLER)
    build_war(store, "wfto", WF_SPEC, WF_HANDLER)
    build_mar(store, "prec", PATH_HANDLER, config_yaml="batchSize: 2\nmaxBatchDelay: 5\n")
    _without_handler(build_mar(store, "nohandler", PATH_HANDLER))
    with start_server(work, model_store=store,
                      args=["--disable-token-auth", "--enable-model-api", "--ncs",
                            "--models", "pathecho.mar", "slowecho.mar"],
                      config={"disable_system_metrics": True, "default_workers_per_model": 1,
                              "blacklist_env_vars": "DROPIN_SECRET.*",
                              "default_service_handler": "handler:handle",
                              "models": {"prec": {"1.0": {"batchSize": 4, "maxBatchDelay": 77,
                                                          "responseTimeout": 11}}}},
                      env={"DROPIN_SECRET_TOKEN": "s3cret", "DROPIN_VISIBLE": "yes"}) as srv:
        yield srv


def test_extra_path_segments_reach_the_handler(server):
    base = f"{server.inference_url}/predictions/pathecho"
    deep = requests.post(f"{base}/1.0/v1/chat/completions", data=b"x", timeout=TIMEOUT)
    assert deep.status_code == 200, deep.text
    assert deep.json()["url_path"] == "v1/chat/completions"
    assert requests.post(base, data=b"x", timeout=TIMEOUT).json()["url_path"] == ""
    missing = requests.post(f"{base}/9.9/v1/completions", data=b"x", timeout=TIMEOUT)
    assert missing.status_code == 404 and "9.9" in missing.json()["message"]


def test_blacklisted_variables_never_reach_workers(server):
    answer = requests.post(f"{server.inference_url}/predictions/pathecho", data=b"x",
                           timeout=TIMEOUT).json()
    assert answer["secret"] is None and answer["visible"] == "yes"


def test_api_description_on_both_ports_and_per_model_options(server):
    for url in (server.inference_url, server.management_url):
        doc = requests.get(f"{url}/api-description", timeout=TIMEOUT)
        assert doc.status_code == 200 and doc.json()["openapi"].startswith("3.")
    inference = requests.get(f"{server.inference_url}/api-description", timeout=TIMEOUT).json()
    assert "/predictions/{model_name}" in inference["paths"]
    model = requests.options(f"{server.inference_url}/predictions/pathecho", timeout=TIMEOUT)
    assert model.status_code == 200
    assert "/predictions/pathecho" in model.json()["paths"]
    unknown = requests.options(f"{server.inference_url}/predictions/nope", timeout=TIMEOUT)
    assert unknown.status_code == 404 and unknown.json()["message"] == "Model not found: nope"


def test_describe_customized_asks_the_handler(server):
    plain = requests.get(f"{server.management_url}/models/pathecho", timeout=TIMEOUT).json()
    assert "customizedMetadata" not in plain[0]
    custom = requests.get(f"{server.management_url}/models/pathecho",
                          params={"customized": "true"}, timeout=TIMEOUT)
    assert custom.status_code == 200, custom.text
    meta = custom.json()[0]["customizedMetadata"]
    assert '"about": "reports its url_path"' in meta
    bad = requests.get(f"{server.management_url}/models/pathecho",
                       params={"customized": "maybe"}, timeout=TIMEOUT)
    assert bad.status_code == 400


def test_model_config_queue_size_device_and_unsupported_keys(server):
    described = requests.get(f"{server.management_url}/models/pathecho", timeout=TIMEOUT).json()
    assert described[0]["jobQueueStatus"]["remainingCapacity"] == 3
    assert described[0]["deviceType"] == "cpu"
    assert all(w["gpu"] is False for w in described[0]["workers"])
    log = (server.workdir / "logs" / "ts_log.log").read_text()
    assert "model pathecho: model-config.yaml keys not supported by dagserve (no effect): " \
           "parallelType" in log


def test_workflow_response_timeout_reaches_its_nodes(server):
    bad = requests.post(f"{server.management_url}/workflows",
                        params={"url": "wfto.war", "response_timeout": "soon"}, timeout=TIMEOUT)
    assert bad.status_code == 400 and "response_timeout" in bad.json()["message"]
    ok = requests.post(f"{server.management_url}/workflows",
                       params={"url": "wfto.war", "response_timeout": 33}, timeout=60)
    assert ok.status_code == 200, ok.text
    node = requests.get(f"{server.management_url}/models/wfto__echo", timeout=TIMEOUT).json()
    assert node[0]["responseTimeout"] == 33


def test_unregister_lets_the_running_request_finish(server):
    results = {}

    def slow() -> None:
        results["r"] = requests.post(f"{server.inference_url}/predictions/slowecho",
                                     data=b"slow", timeout=TIMEOUT)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)  # let the request reach the worker (it then runs for 1.5 s)
    gone = requests.delete(f"{server.management_url}/models/slowecho", timeout=TIMEOUT)
    thread.join(TIMEOUT)
    assert gone.status_code == 200, gone.text
    assert results["r"].status_code == 200, results["r"].text


def test_system_metrics_can_be_disabled(server):
    text = requests.get(f"{server.metrics_url}/metrics", timeout=TIMEOUT).text
    assert "ts_inference_requests_total" in text
    assert "CPUUtilization" not in text and "MemoryUsed" not in text


def test_precedence_api_then_model_config_then_config_properties(server):
    registered = requests.post(f"{server.management_url}/models",
                               params={"url": "prec.mar", "batch_size": 3}, timeout=60)
    assert registered.status_code == 200, registered.text
    prec = requests.get(f"{server.management_url}/models/prec", timeout=TIMEOUT).json()[0]
    assert (prec["batchSize"], prec["maxBatchDelay"], prec["responseTimeout"]) == (3, 5, 11)


def test_default_service_handler_serves_an_archive_naming_none(server):
    registered = requests.post(f"{server.management_url}/models",
                               params={"url": "nohandler.mar", "initial_workers": 1}, timeout=60)
    assert registered.status_code == 200, registered.text
    answer = requests.post(f"{server.inference_url}/predictions/nohandler", data=b"x",
                           timeout=TIMEOUT)
    assert answer.status_code == 200 and answer.json()["url_path"] == ""
