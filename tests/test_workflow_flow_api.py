"""WORKFLOW-SPEC.md's keys against the real server: ``when`` (skipped nodes never reach a
handler), ``foreach`` (items batch in the node's queue), ``inputs``, ``on-error``, shared
``model:`` nodes, deadlines and workflow versions."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
import requests

from model_builders import handler_archive
from server_utils import start_server, wait_until
from test_workflow_api import build_war

HANDLER = Path(__file__).parent / "fixtures" / "workflows" / "flow_handler.py"
JSON_HEADERS = {"Content-Type": "application/json"}

SPECS = {
    "router": """
        models:
          min-workers: 1
        dag:
          route: [dog, cat]
        nodes:
          dog: {when: "animal == 'dog'"}
          cat: {when: "animal == 'cat'"}
    """,
    "fan": """
        models:
          batch-size: 8
          max-batch-delay: 200
        dag:
          route: [square]
          square: [summary]
        nodes:
          square: {foreach: "numbers", max-items: 25}
          summary:
            inputs:
              original: $request
              squares: square
              first: {from: route, select: "numbers[0]"}
    """,
    "fallback": """
        models:
          retry-attempts: 0
        dag:
          route: [boom]
        nodes:
          boom:
            on-error: {default: {fallback: true}}
    """,
    "skipper": """
        models:
          retry-attempts: 0
        dag:
          route: [boom]
        nodes:
          boom: {on-error: skip}
    """,
    "notjson": """
        models: {}
        dag:
          plain: [dog]
        nodes:
          dog: {when: "animal == 'dog'"}
    """,
    "deadline": """
        models: {}
        dag:
          route: [slow]
        workflow:
          deadline-ms: 300
    """,
    "plainslow": """
        models: {}
        dag:
          route: [slow]
    """,
    "shared": """
        models:
          echoer:
            model: echo
        dag:
          tag: [echoer]
    """,
    "missing": """
        models:
          classifier:
            model: nosuchmodel
        dag:
          tag: [classifier]
    """,
    "borrower": """
        models:
          borrowed:
            model: router__dog
        dag:
          tag: [borrowed]
    """,
    "ver1": """
        models: {}
        dag:
          route: [slow]
    """,
    "ver2": """
        models: {}
        dag:
          tag: []
    """,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("flow")
    models, wars = work / "model_store", work / "wf_store"
    models.mkdir()
    wars.mkdir()
    handler_archive("echo", "echo_handler.py", models)
    for name, spec in SPECS.items():
        result = build_war(wars, name, spec, handler=HANDLER)
        assert result.returncode == 0, result.stderr
    log = work / "calls.log"
    log.write_text("")
    with start_server(work, model_store=models,
                      args=["--workflow-store", str(wars), "--disable-token-auth",
                            "--enable-model-api", "--ncs"],
                      env={"FLOW_LOG": str(log), "FLOW_SLOW_S": "1.5"}, timeout=120) as srv:
        srv.calls_log = log
        yield srv


def register(srv, war: str, **params) -> requests.Response:
    return requests.post(srv.management_url + "/workflows",
                         params={"url": war, **params}, timeout=120)


def wfpredict(srv, path: str, body, headers=None) -> requests.Response:
    data = json.dumps(body) if not isinstance(body, (bytes, str)) else body
    return requests.post(f"{srv.inference_url}/wfpredict/{path}", data=data,
                         headers=headers or JSON_HEADERS, timeout=60)


def calls(srv) -> list[tuple[str, int]]:
    return [(line.split()[0], int(line.split()[1]))
            for line in srv.calls_log.read_text().splitlines() if line]


def test_when_skips_a_branch_without_reaching_its_handler(server):
    assert register(server, "router.war").status_code == 200
    before = Counter(node for node, _ in calls(server))
    r = wfpredict(server, "router", {"animal": "dog"})
    assert r.status_code == 200, r.text
    assert r.json() == {"breed": "husky", "saw": {"animal": "dog"}}
    r = wfpredict(server, "router", {"animal": "cat"})
    assert r.json() == {"cat": True}
    r = wfpredict(server, "router", {"animal": "fish"})  # both skipped: the start node answers
    assert r.json() == {"animal": "fish"}
    after = Counter(node for node, _ in calls(server))
    assert after["route"] - before["route"] == 3
    assert after["dog"] - before["dog"] == 1
    assert after["cat"] - before["cat"] == 1
    desc = requests.get(server.management_url + "/workflows/router", timeout=10).json()[0]
    assert desc["workflowDag"]["conditions"] == {"dog": "animal == 'dog'",
                                                 "cat": "animal == 'cat'"}


def test_foreach_items_batch_and_inputs_reach_the_summary(server):
    assert register(server, "fan.war").status_code == 200
    numbers = list(range(20))
    r = wfpredict(server, "fan", {"numbers": numbers})
    assert r.status_code == 200, r.text
    out = r.json()
    assert json.loads(out["squares"]) == [n * n for n in numbers]
    assert json.loads(out["original"]) == {"numbers": numbers}
    assert out["first"] == "0"
    sizes = [size for node, size in calls(server) if node == "square"]
    assert sum(sizes) == 20
    assert max(sizes) > 1, sizes  # the items were batched together
    assert max(sizes) <= 8
    desc = requests.get(server.management_url + "/workflows/fan", timeout=10).json()[0]
    dag = desc["workflowDag"]
    assert dag["foreach"] == {"square": "numbers"}
    assert ["$request", "summary", "original"] in dag["inputsEdges"]
    assert ["route", "summary", "first"] in dag["inputsEdges"]


def test_foreach_too_many_items_and_empty_list(server):
    r = wfpredict(server, "fan", {"numbers": list(range(30))})
    assert r.status_code == 400
    assert "square" in r.json()["message"] and "max-items" in r.json()["message"]
    r = wfpredict(server, "fan", {"numbers": []})
    assert r.status_code == 200
    assert json.loads(r.json()["squares"]) == []


def test_expression_over_non_json_output_is_a_client_error(server):
    assert register(server, "notjson.war").status_code == 200
    r = wfpredict(server, "notjson", b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400
    body = r.json()
    assert "dog" in body["message"] and "not JSON" in body["message"]


def test_on_error_default_and_skip(server):
    assert register(server, "fallback.war").status_code == 200
    assert register(server, "skipper.war").status_code == 200
    r = wfpredict(server, "fallback", {"x": 1})
    assert r.status_code == 200, r.text
    assert r.json() == {"fallback": True}
    r = wfpredict(server, "skipper", {"x": 1})
    assert r.status_code == 200, r.text
    assert r.json() == {"x": 1}  # boom was skipped: the start node answers


def test_deadline_is_a_504_naming_the_running_node(server):
    assert register(server, "deadline.war").status_code == 200
    assert register(server, "plainslow.war").status_code == 200
    r = wfpredict(server, "deadline", {"x": 1})
    assert r.status_code == 504
    assert "slow" in r.json()["message"]
    r = wfpredict(server, "plainslow", {"x": 1}, headers={**JSON_HEADERS,
                                                           "X-Request-Timeout-Ms": "200"})
    assert r.status_code == 504
    assert "slow" in r.json()["message"]
    r = wfpredict(server, "plainslow", {"x": 1}, headers={**JSON_HEADERS,
                                                           "X-Request-Timeout-Ms": "soon"})
    assert r.status_code == 400
    assert "X-Request-Timeout-Ms" in r.json()["message"]


def test_shared_model_serves_both_and_cannot_be_unregistered(server):
    r = register(server, "missing.war")
    assert r.status_code == 400
    assert "classifier" in r.json()["message"] and "nosuchmodel" in r.json()["message"]
    r = register(server, "borrower.war")  # another workflow's node is not a model to share
    assert r.status_code == 400
    assert "borrowed" in r.json()["message"] and "node of workflow router" in r.json()["message"]
    r = requests.post(server.management_url + "/models",
                      params={"url": "echo.mar", "initial_workers": 1}, timeout=120)
    assert r.status_code == 200, r.text
    assert register(server, "shared.war").status_code == 200
    assert wfpredict(server, "shared", b"hi", {"Content-Type": "text/plain"}).text == "tag(hi)"
    r = requests.post(server.inference_url + "/predictions/echo", data=b"direct", timeout=30)
    assert r.text == "direct"
    r = requests.delete(server.management_url + "/models/echo", timeout=30)
    assert r.status_code == 409
    assert "shared/1.0" in r.json()["message"]
    desc = requests.get(server.management_url + "/workflows/shared", timeout=10).json()[0]
    assert desc["workflowDag"]["sharedModels"] == {"echoer": "echo"}
    assert desc["nodes"]["echoer"]["shared"] is True
    assert requests.delete(server.management_url + "/workflows/shared",
                           timeout=30).status_code == 200
    assert requests.post(server.inference_url + "/predictions/echo", data=b"still",
                         timeout=30).text == "still"  # the workflow did not own it
    assert requests.delete(server.management_url + "/models/echo", timeout=30).status_code == 200


def test_versions(server):
    assert register(server, "ver1.war", workflow_name="ver").status_code == 200
    r = register(server, "ver2.war", workflow_name="ver", version="2.0")
    assert r.status_code == 200, r.text
    r = register(server, "ver2.war", workflow_name="ver", version="2.0")
    assert r.status_code == 409
    assert wfpredict(server, "ver/2.0", "a", {"Content-Type": "text/plain"}).text == "tag(a)"
    assert wfpredict(server, "ver/9.9", "a").status_code == 404
    assert requests.put(server.management_url + "/workflows/ver/9.9/set-default",
                        timeout=10).status_code == 404
    # a request in flight on 1.0 (the default) finishes on 1.0 while the default switches
    slow_before = sum(1 for n, _ in calls(server) if n == "slow")
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        r=wfpredict(server, "ver", "a", {"Content-Type": "text/plain"})))
    thread.start()
    assert wait_until(lambda: sum(1 for n, _ in calls(server) if n == "slow") > slow_before,
                      timeout=30)
    r = requests.put(server.management_url + "/workflows/ver/2.0/set-default", timeout=10)
    assert r.status_code == 200, r.text
    assert wfpredict(server, "ver", "b", {"Content-Type": "text/plain"}).text == "tag(b)"
    thread.join(timeout=30)
    assert result["r"].text == "slow done"
    desc = requests.get(server.management_url + "/workflows/ver/all", timeout=10).json()
    assert {d["workflowVersion"]: d["isDefault"] for d in desc} == {"1.0": False, "2.0": True}
    assert requests.delete(server.management_url + "/workflows/ver/2.0",
                           timeout=30).status_code == 403
    assert requests.delete(server.management_url + "/workflows/ver/1.0",
                           timeout=30).status_code == 200
    assert wfpredict(server, "ver/1.0", "a").status_code == 404
    assert wfpredict(server, "ver", "c", {"Content-Type": "text/plain"}).text == "tag(c)"


def test_versions_and_shared_models_survive_a_killed_server(tmp_path):
    models, wars = tmp_path / "model_store", tmp_path / "wf_store"
    models.mkdir()
    wars.mkdir()
    handler_archive("echo", "echo_handler.py", models)
    for name in ("shared", "fallback"):
        assert build_war(wars, name, SPECS[name], handler=HANDLER).returncode == 0
    args = ["--workflow-store", str(wars), "--disable-token-auth", "--enable-model-api"]
    first = start_server(tmp_path, model_store=models, args=args, timeout=120)
    try:
        assert requests.post(first.management_url + "/models",
                             params={"url": "echo.mar", "initial_workers": 1},
                             timeout=120).status_code == 200
        assert register(first, "shared.war", workflow_name="wf").status_code == 200
        assert register(first, "fallback.war", workflow_name="wf",
                        version="2.0").status_code == 200
        assert requests.put(first.management_url + "/workflows/wf/2.0/set-default",
                            timeout=10).status_code == 200
    finally:
        first.kill()
    with start_server(tmp_path, model_store=models, args=args, timeout=120) as second:
        assert wfpredict(second, "wf", {"x": 1}).json() == {"fallback": True}  # 2.0, default
        assert wfpredict(second, "wf/1.0", "y", {"Content-Type": "text/plain"}).text == \
            "tag(y)"  # through the shared echo model
        r = requests.delete(second.management_url + "/models/echo", timeout=30)
        assert r.status_code == 409 and "wf/1.0" in r.json()["message"]
        desc = requests.get(second.management_url + "/workflows/wf/all", timeout=10).json()
        assert {d["workflowVersion"]: d["isDefault"] for d in desc} == {"1.0": False,
                                                                        "2.0": True}
