"""COMPAT.md §6 (config.properties keys, token auth, logs) and §7 (workflows loaded at start,
the model API gate on workflows, workers splitting the cores) against one real server.

The server runs with token authorization on (the default) and the model API off. Its
config.properties sets: ``model_store``, ``workflow_store``, ``load_models`` (a comma list),
``default_workers_per_model``, ``default_response_timeout``, ``decode_input_request=false``,
``models`` (per-model JSON), ``max_response_size``, ``install_py_dep_per_model`` and
``cors_*``. ``--workflows`` loads a workflow at start.

A statement dagserve does not keep yet is an ``xfail(strict=True)`` test whose reason says
what is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from server_utils import STARTED_LINE, build_mar, build_war, start_server, wait_until

TIMEOUT = 60
BIG = 5000  # bytes the "cfgd" model answers to "big"; max_response_size is below it
MAX_RESPONSE = 2000

TYPES_HANDLER = '''\
"""Reports the type of each field it got and torch's thread count in this worker."""
import torch


def handle(data, context):
    if data is None:
        return None
    return [{"types": {k: type(v).__name__ for k, v in row.items()},
             "threads": torch.get_num_threads()} for row in data]
'''

BIG_HANDLER = '''\
"""Echo; ``big`` gets a reply larger than max_response_size."""


def handle(data, context):
    if data is None:
        return None
    out = []
    for row in data:
        body = bytes(row.get("body") or b"")
        out.append(b"x" * BIG if body == b"big" else body)
    return out
'''.replace("BIG", str(BIG))

DEPS_HANDLER = '''\
"""Needs a package that only its requirements file provides."""
import dagserve_compat_dep


def handle(data, context):
    if data is None:
        return None
    return [dagserve_compat_dep.VALUE for _ in data]
'''

WF_HELLO = '''\
def hello(data, context):
    if data is None:
        return None
    return ["hello from a workflow loaded at start" for _ in data]
'''

PER_MODEL = {"cfgd": {"1.0": {"defaultVersion": True, "marName": "cfgd.mar", "minWorkers": 1,
                              "maxWorkers": 3, "batchSize": 4, "maxBatchDelay": 77,
                              "responseTimeout": 44}}}


def build_wheel(dest: Path) -> Path:
    """A minimal pure-Python wheel of ``dagserve_compat_dep`` (no network needed to install)."""
    files = {
        "dagserve_compat_dep/__init__.py": b"VALUE = 'installed from requirements'\n",
        "dagserve_compat_dep-1.0.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: dagserve-compat-dep\nVersion: 1.0\n",
        "dagserve_compat_dep-1.0.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("dagserve_compat_dep-1.0.dist-info/RECORD,,")
    path = dest / "dagserve_compat_dep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("dagserve_compat_dep-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def build_deps_mar(store: Path, src: Path) -> None:
    src.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(src)
    (src / "handler.py").write_text(DEPS_HANDLER)
    (src / "requirements.txt").write_text(f"--no-index\n{wheel}\n")
    subprocess.run([sys.executable, "-m", "dagserve.archiver.model_cli", "--model-name", "deps",
                    "-v", "1.0", "--handler", str(src / "handler.py"),
                    "-r", str(src / "requirements.txt"), "--export-path", str(store), "-f"],
                   check=True, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    work = tmp_path_factory.mktemp("compat-config")
    store, wars = work / "model_store", work / "wf_store"
    build_mar(store, "types", TYPES_HANDLER)
    build_mar(store, "cfgd", BIG_HANDLER)
    build_deps_mar(store, work / "deps-src")
    build_war(wars, "wfstart", "models: {}\ndag:\n  hello: []\n", WF_HELLO)
    config = {
        "model_store": str(store), "workflow_store": str(wars),
        "load_models": "types.mar,cfgd.mar,deps.mar",
        "default_workers_per_model": 2, "default_response_timeout": 33,
        "decode_input_request": False, "models": PER_MODEL,
        "max_response_size": MAX_RESPONSE, "install_py_dep_per_model": True,
        "cors_allowed_origin": "*", "cors_allowed_methods": "GET, POST, PUT, OPTIONS",
        "cors_allowed_headers": "X-Custom-Header",
    }
    # without enable_envvars_config, TS_* variables change nothing
    with start_server(work, config=config, args=["--ncs", "--workflows", "wfstart.war"],
                      env={"TS_JOB_QUEUE_SIZE": "3"}, timeout=120) as server:
        yield server


def infer(srv, method: str, path: str, **kw) -> requests.Response:
    headers = {**srv.auth("inference"), **kw.pop("headers", {})}
    return requests.request(method, srv.inference_url + path, headers=headers,
                            timeout=TIMEOUT, **kw)


def mgmt(srv, method: str, path: str, **kw) -> requests.Response:
    headers = {**srv.auth("management"), **kw.pop("headers", {})}
    return requests.request(method, srv.management_url + path, headers=headers,
                            timeout=TIMEOUT, **kw)


def describe(srv, name: str) -> dict:
    resp = mgmt(srv, "GET", f"/models/{name}")
    assert resp.status_code == 200, resp.text
    [d] = resp.json()
    return d


def test_started_line_printed_once(srv):
    assert srv.output().count(STARTED_LINE) == 1


def test_key_file_is_private(srv):
    mode = stat.S_IMODE((srv.workdir / "key_file.json").stat().st_mode)
    assert mode == 0o600, oct(mode)


def test_token_failure_is_a_torchserve_error_with_a_request_id(srv):
    resp = requests.get(srv.inference_url + "/ping", timeout=TIMEOUT)
    assert resp.status_code == 400
    assert resp.json() == {"code": 400, "type": resp.json()["type"],
                           "message": "Token Authorization failed. Token either incorrect, "
                                      "expired, or not provided correctly"}
    assert resp.headers.get("x-request-id")


def test_load_models_comma_list_and_default_workers(srv):
    names = [m["modelName"] for m in mgmt(srv, "GET", "/models").json()["models"]]
    assert {"types", "cfgd"} <= set(names)
    d = describe(srv, "types")
    assert d["loadedAtStartup"] is True
    assert d["minWorkers"] == 2  # default_workers_per_model
    assert [w["status"] for w in d["workers"]] == ["READY", "READY"]
    assert d["responseTimeout"] == 33  # default_response_timeout
    assert d["jobQueueStatus"]["remainingCapacity"] == 100  # TS_JOB_QUEUE_SIZE ignored


def test_per_model_json_config(srv):
    d = describe(srv, "cfgd")
    assert (d["minWorkers"], d["maxWorkers"], d["batchSize"], d["maxBatchDelay"],
            d["responseTimeout"]) == (1, 3, 4, 77, 44)


def test_decode_input_request_false_keeps_bytes(srv):
    for ctype, body in (("application/json", b'{"a": 1}'), ("text/plain", b"text")):
        resp = infer(srv, "POST", "/predictions/types", data=body,
                     headers={"Content-Type": ctype})
        assert resp.status_code == 200, resp.text
        assert resp.json()["types"]["body"] in ("bytes", "bytearray"), ctype


def test_cpu_workers_split_the_cores(srv):
    resp = infer(srv, "POST", "/predictions/types", data=b"x")
    assert resp.json()["threads"] == max(1, (os.cpu_count() or 1) // 2)


def test_workflow_loaded_at_start_and_model_api_gate(srv):
    resp = infer(srv, "POST", "/wfpredict/wfstart", data=b"x")
    assert resp.status_code == 200, resp.text
    assert resp.text == "hello from a workflow loaded at start"
    for method, path, params in (("POST", "/workflows", {"url": "wfstart.war",
                                                         "workflow_name": "again"}),
                                 ("DELETE", "/workflows/wfstart", None),
                                 ("POST", "/models", {"url": "types.mar",
                                                      "model_name": "again"})):
        resp = mgmt(srv, method, path, params=params)
        assert resp.status_code == 405, resp.text
        assert resp.json()["code"] == 405
    assert infer(srv, "POST", "/wfpredict/wfstart", data=b"x").status_code == 200
    assert mgmt(srv, "GET", "/workflows/again").status_code == 404


def test_logs_directory(srv):
    logs = srv.workdir / "logs"
    assert infer(srv, "POST", "/predictions/cfgd", data=b"logged").status_code == 200
    for name in ("ts_log.log", "model_log.log"):
        assert (logs / name).is_file(), name
    assert wait_until(lambda: "/predictions/cfgd" in
                      (logs / "access_log.log").read_text(errors="replace"), 10)


def test_metrics_logs_are_written(srv):
    assert infer(srv, "POST", "/predictions/cfgd", data=b"m").status_code == 200
    logs = srv.workdir / "logs"

    def logged(name: str, text: str) -> bool:
        path = logs / name
        return path.exists() and text in path.read_text(errors="replace")

    assert wait_until(lambda: logged("model_metrics.log", "HandlerTime.ms:"), 5)
    assert wait_until(lambda: logged("ts_metrics.log", "Requests2XX.Count:"), 5)


def test_reply_over_max_response_size_is_refused(srv):
    assert infer(srv, "POST", "/predictions/cfgd", data=b"small").content == b"small"
    resp = infer(srv, "POST", "/predictions/cfgd", data=b"big")
    assert resp.status_code >= 500, (resp.status_code, len(resp.content))
    assert resp.json()["code"] == resp.status_code
    assert infer(srv, "POST", "/predictions/cfgd", data=b"after").content == b"after"


def test_cors_headers(srv):
    # TorchServe adds the three configured headers to its responses
    resp = infer(srv, "GET", "/ping", headers={"Origin": "http://example.com"})
    assert resp.status_code == 200
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    assert "POST" in resp.headers.get("Access-Control-Allow-Methods", "")
    assert "X-Custom-Header" in resp.headers.get("Access-Control-Allow-Headers", "")


def test_install_py_dep_per_model(srv):
    resp = infer(srv, "POST", "/predictions/deps", data=b"x")
    assert resp.status_code == 200, resp.text
    assert resp.text == "installed from requirements"
