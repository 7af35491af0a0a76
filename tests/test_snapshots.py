"""Config snapshots: the properties format, and restores across real server restarts
(after SIGKILL, after a clean stop, not with --ncs, from a TorchServe snapshot)."""

from __future__ import annotations

import json

import pytest
import requests

from dagserve.engine.properties import format_properties, parse_properties
from dagserve.engine.snapshot import FILE_NAME
from server_utils import ECHO_HANDLER, build_mar, build_war, start_server

TIMEOUT = 60
ARGS = ["--disable-token-auth", "--enable-model-api"]


# -- the file format ---------------------------------------------------------------------------

def test_properties_round_trip_with_java_escapes():
    props = {"inference_address": "http://127.0.0.1:8080",
             "model_snapshot": json.dumps({"a": 'b\\c "q"', "n": {"k": [1, 2]}}, indent=2),
             " key with spaces": " leading space=kept", "unicode": "é", "empty": ""}
    text = format_properties(props, "Saving snapshot")
    assert text.startswith("#Saving snapshot\n#")
    assert "inference_address=http\\://127.0.0.1\\:8080\n" in text  # as Java writes it
    [line] = [ln for ln in text.splitlines() if ln.startswith("model_snapshot=")]
    assert line.startswith('model_snapshot={\\n  "a"\\: ')  # one line, JSON newlines escaped
    assert parse_properties(text) == props


def test_parse_java_properties_forms():
    text = ("# comment\n! other comment\n  a = b\nc:d\ne f\ng\n"
            "long = one \\\n    two\nesc=x\\u0041\\ty\n")
    assert parse_properties(text) == {"a": "b", "c": "d", "e": "f", "g": "",
                                      "long": "one two", "esc": "xA\ty"}


TORCHSERVE_SNAPSHOT = r"""#Saving snapshot
#Thu Jun 11 10:24:58 UTC 2020
inference_address=http\://127.0.0.1\:8443
load_models=echo.mar
model_snapshot={\n  "name"\: "20200611102458577-startup.cfg",\n  "modelCount"\: 2,\n  "created"\: 1591871098577,\n  "models"\: {\n    "echo"\: {\n      "1.0"\: {\n        "defaultVersion"\: true,\n        "marName"\: "echo.mar",\n        "minWorkers"\: 1,\n        "maxWorkers"\: 2,\n        "batchSize"\: 2,\n        "maxBatchDelay"\: 50,\n        "responseTimeout"\: 60,\n        "runtimeType"\: "python"\n      }\n    },\n    "lost"\: {\n      "1.0"\: {\n        "defaultVersion"\: true,\n        "marName"\: "lost.mar",\n        "minWorkers"\: 1,\n        "maxWorkers"\: 1,\n        "batchSize"\: 1,\n        "maxBatchDelay"\: 100,\n        "responseTimeout"\: 120\n      }\n    }\n  }\n}
tsConfigFile=config.properties
"""


def test_parse_a_torchserve_snapshot():
    props = parse_properties(TORCHSERVE_SNAPSHOT)
    assert props["inference_address"] == "http://127.0.0.1:8443"
    snap = json.loads(props["model_snapshot"])
    assert snap["models"]["echo"]["1.0"]["marName"] == "echo.mar"


# -- against the real server -------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("model_store")
    build_mar(path, "echo", ECHO_HANDLER)
    build_mar(path, "echo", ECHO_HANDLER, version="2.0", export_name="echo_v2.mar")
    return path


def has_workflows() -> bool:
    try:
        import dagserve.engine.workflow_manager  # noqa: F401
    except ImportError:
        return False
    return True


def call(method: str, url: str, **kw) -> requests.Response:
    return requests.request(method, url, timeout=TIMEOUT, **kw)


def snapshot_files(workdir) -> list:
    config = workdir / "logs" / "config"
    return sorted(p.name for p in config.iterdir() if FILE_NAME.match(p.name)) \
        if config.is_dir() else []


def describe(srv, path: str) -> list[dict]:
    resp = call("GET", srv.management_url + path)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_models_survive_sigkill_and_ncs_skips_the_restore(tmp_path, store):
    workflows = has_workflows()
    if workflows:
        build_war(store, "chain", "models:\n  first:\n    url: echo.mar\n"
                                  "  second:\n    url: echo.mar\ndag:\n  first: [second]\n")
        build_war(store, "shared_chain", "models:\n  first:\n    url: echo.mar\n"
                                         "  second:\n    url: echo.mar\ndag:\n  first: [second]\n"
                                         "workflow:\n  share-workers: true\n")
    first = start_server(tmp_path, model_store=store, args=ARGS)
    try:
        mgmt = first.management_url
        resp = call("POST", mgmt + "/models", params={
            "url": "echo.mar", "initial_workers": 1, "batch_size": 3, "max_batch_delay": 20,
            "response_timeout": 33})
        assert resp.status_code == 200, resp.text
        assert call("POST", mgmt + "/models", params={"url": "echo_v2.mar"}).status_code == 200
        assert call("PUT", mgmt + "/models/echo/2.0/set-default").status_code == 200
        assert call("POST", mgmt + "/models", params={"url": "echo.mar", "model_name": "spare",
                                                      "handler": "handler:handle"}
                    ).status_code == 200
        if workflows:
            for war in ("chain.war", "shared_chain.war"):
                resp = call("POST", mgmt + "/workflows", params={"url": war})
                assert resp.status_code == 200, resp.text
        resp = call("PUT", mgmt + "/models/spare",
                    params={"min_worker": 1, "max_worker": 2, "synchronous": "true"})
        assert resp.status_code == 200, resp.text
    finally:
        first.kill()  # at once after the last answer: no shutdown snapshot

    names = snapshot_files(tmp_path)
    assert names and names[-1].endswith("-snapshot.cfg")
    props = parse_properties((tmp_path / "logs" / "config" / names[-1]).read_text())
    saved = json.loads(props["model_snapshot"])
    assert saved["modelCount"] == 3
    assert saved["models"]["spare"]["1.0"]["minWorkers"] == 1
    assert saved["models"]["spare"]["1.0"]["handler"] == "handler:handle"
    assert "chain__first" not in saved["models"]  # node models travel with their workflow

    second = start_server(tmp_path, model_store=store, args=ARGS)
    try:
        versions = {d["modelVersion"]: d for d in describe(second, "/models/echo/all")}
        assert set(versions) == {"1.0", "2.0"}
        v1 = versions["1.0"]
        assert (v1["batchSize"], v1["maxBatchDelay"], v1["responseTimeout"]) == (3, 20, 33)
        assert [w["status"] for w in v1["workers"]] == ["READY"]
        assert versions["2.0"]["workers"] == []
        assert describe(second, "/models/echo")[0]["modelVersion"] == "2.0"  # the default
        assert "could not restore" not in (tmp_path / "logs" / "ts_log.log").read_text()
        [spare] = describe(second, "/models/spare")
        assert (spare["minWorkers"], spare["maxWorkers"], len(spare["workers"])) == (1, 2, 1)
        resp = call("POST", second.inference_url + "/predictions/echo/1.0", data=b"again")
        assert resp.content == b"again"
        if workflows:
            resp = call("POST", second.inference_url + "/wfpredict/chain", data=b"flow")
            assert resp.status_code == 200 and resp.content == b"flow"
            resp = call("POST", second.inference_url + "/wfpredict/shared_chain", data=b"one")
            assert resp.status_code == 200 and resp.content == b"one"
            pids = [{w["pid"] for w in describe(second, f"/models/shared_chain__{n}")[0]
                     ["workers"]} for n in ("first", "second")]
            assert len(pids[0]) == 1 and pids[0] == pids[1]  # restored sharing one worker
    finally:
        assert second.stop() == 0
    names = snapshot_files(tmp_path)
    assert names[-1].endswith("-shutdown.cfg")

    third = start_server(tmp_path, model_store=store, args=[*ARGS, "--ncs"])
    try:
        assert describe(third, "/models") == {"models": []}
        resp = call("POST", third.management_url + "/models", params={"url": "echo.mar"})
        assert resp.status_code == 200
    finally:
        third.stop()
    assert snapshot_files(tmp_path) == names  # --ncs writes none either


def test_restore_from_a_torchserve_snapshot(tmp_path, store):
    config = tmp_path / "logs" / "config"
    config.mkdir(parents=True)
    (config / "20200611102458577-startup.cfg").write_text(TORCHSERVE_SNAPSHOT)
    (config / "notes.txt").write_text("not a snapshot")
    srv = start_server(tmp_path, model_store=store, args=ARGS)
    try:
        [echo] = describe(srv, "/models/echo")
        assert (echo["minWorkers"], echo["maxWorkers"], echo["batchSize"],
                echo["maxBatchDelay"], echo["responseTimeout"]) == (1, 2, 2, 50, 60)
        assert [w["status"] for w in echo["workers"]] == ["READY"]
        # "lost.mar" is not in the store: logged and skipped, the rest is served
        assert call("GET", srv.management_url + "/models/lost").status_code == 404
    finally:
        srv.stop()
    newest = snapshot_files(tmp_path)[-1]
    saved = json.loads(parse_properties((config / newest).read_text())["model_snapshot"])
    assert list(saved["models"]) == ["echo"]
