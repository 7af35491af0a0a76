"""``workflow: share-workers: true``: a workflow's model nodes in one worker process
(engine/node_groups.py, engine/workflow_manager.py, engine/handler/service.py), and chains
of them run in one worker call. Against a real server: one process for the models that may
share, each model still its own (its own handler module even when the file names are the
same, its own files, metrics, trace and /predictions), apart when their files would import
under the same name or their model config differs, and nothing left behind."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import requests

from dagserve.engine.node_groups import _apart_where_names_clash, sibling_modules
from dagserve.workflows import SpecError, load_spec
from server_utils import (FAILING_INIT_HANDLER, build_mar, build_war, pid_alive,
                          serving_workflows, traced_wfpredict, wait_until, worker_pids)

# Every model's handler file is handler.py; each says which model it is from its own
# helper module (a different name per model) or, for the clashing pair, from model.py.
HANDLER = textwrap.dedent('''
    import os

    from {helper} import LABEL


    def handle(data, context):
        if data is None:
            return None
        out = []
        for row in data:
            body = row.get("body", row.get("data"))
            text = body.decode() if isinstance(body, (bytes, bytearray)) else str(body)
            out.append(f"{{LABEL}}[{{os.getpid()}}]({{text}})")
        return out
''')


# The workflows' own functions (TorchServe's function nodes)
WORKFLOW_HANDLER = textwrap.dedent('''
    import os


    def _text(row):
        value = row.get("body", row.get("data"))
        return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


    def pre(data, context):
        return None if data is None else [f"pre({_text(row)})" for row in data]


    def post(data, context):
        return None if data is None else [f"post[{os.getpid()}]({_text(row)})" for row in data]
''')


def _model(store: Path, name: str, helper: str, config_yaml: str | None = None) -> None:
    build_mar(store, name, HANDLER.format(helper=helper),
              extra_files={f"{helper}.py": f"LABEL = {name!r}\n"}, config_yaml=config_yaml)


SPECS = {
    "together": """
        models:
          batch-size: 4
          max-batch-delay: 2
          up: {url: up.mar}
          mid: {url: mid.mar}
          down: {url: down.mar}
        workflow:
          share-workers: true
        dag:
          up: [mid]
          mid: [down]
    """,
    "whole": """
        models:
          up: {url: up.mar}
          mid: {url: mid.mar}
        workflow:
          share-workers: true
        dag:
          pre: [up]
          up: [mid]
          mid: [post]
    """,
    "one_apart": """
        models:
          up: {url: up.mar}
          mid: {url: mid.mar, share-workers: false}
          down: {url: down.mar}
        workflow:
          share-workers: true
        dag:
          up: [mid]
          mid: [down]
    """,
    "apart": """
        models:
          up: {url: up.mar}
          mid: {url: mid.mar}
        dag:
          up: [mid]
    """,
    "clash": """
        models:
          one: {url: one.mar}
          two: {url: two.mar}
          up: {url: up.mar}
        workflow:
          share-workers: true
        dag:
          one: [two]
          two: [up]
    """,
    "broken": """
        models:
          up: {url: up.mar}
          refuses: {url: refuses.mar}
        workflow:
          share-workers: true
        dag:
          up: [refuses]
    """,
    "configured": """
        models:
          up: {url: up.mar}
          tuned: {url: tuned.mar}
        workflow:
          share-workers: true
        dag:
          up: [tuned]
    """,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("model_groups")
    models, wars = work / "model_store", work / "wf_store"
    for name in ("up", "mid", "down"):
        _model(models, name, f"label_{name}")
    for name in ("one", "two"):  # both bring a model.py
        _model(models, name, "model")
    _model(models, "tuned", "label_tuned", config_yaml="responseTimeout: 77\n")
    build_mar(models, "refuses", FAILING_INIT_HANDLER)
    for name, spec in SPECS.items():
        build_war(wars, name, textwrap.dedent(spec), WORKFLOW_HANDLER)
    with serving_workflows(work, models, wars, [n for n in SPECS if n != "broken"]) as srv:
        yield srv


def test_the_model_nodes_share_one_worker_and_keep_their_own_handlers(server):
    pids = [worker_pids(server, f"together__{node}") for node in ("up", "mid", "down")]
    assert len(pids[0]) == 1 and pids[0] == pids[1] == pids[2]
    (pid,) = pids[0]
    r = requests.post(f"{server.inference_url}/wfpredict/together", data=b"x", timeout=30)
    assert r.status_code == 200, r.text
    assert r.text == f"down[{pid}](mid[{pid}](up[{pid}](x)))"


def test_function_and_model_nodes_share_one_worker_and_one_call(server):
    pids = [worker_pids(server, f"whole__{node}") for node in ("pre", "up", "mid", "post")]
    assert len(pids[0]) == 1 and all(p == pids[0] for p in pids)
    (pid,) = pids[0]
    r, nodes = traced_wfpredict(server, "whole", b"w")
    assert r.status_code == 200, r.text
    assert r.text == f"post[{pid}](mid[{pid}](up[{pid}](pre(w))))"
    attempts = {n: nodes[n]["attempts"] for n in ("pre", "up", "mid", "post")}
    assert all(len(a) == 1 and a[0]["code"] == 200 for a in attempts.values())


def test_a_shared_model_still_answers_predictions_on_its_own(server):
    (pid,) = worker_pids(server, "together__mid")
    r = requests.post(f"{server.inference_url}/predictions/together__mid", data=b"y",
                      timeout=30)
    assert r.status_code == 200, r.text
    assert r.text == f"mid[{pid}](y)"


def test_each_shared_model_keeps_its_trace(server):
    r, nodes = traced_wfpredict(server, "together", b"t")
    assert r.status_code == 200
    for node in ("up", "mid", "down"):
        [attempt] = nodes[node]["attempts"]
        assert attempt["outcome"] == "ok" and attempt["code"] == 200


def test_without_the_key_each_model_keeps_its_own_worker(server):
    assert worker_pids(server, "apart__up").isdisjoint(worker_pids(server, "apart__mid"))


def test_a_model_that_says_share_workers_false_keeps_its_own(server):
    up, mid, down = (worker_pids(server, f"one_apart__{n}") for n in ("up", "mid", "down"))
    assert len(up) == 1 and up == down and mid.isdisjoint(up)
    (shared,), (own,) = up, mid
    r = requests.post(f"{server.inference_url}/wfpredict/one_apart", data=b"q", timeout=30)
    assert r.status_code == 200, r.text
    assert r.text == f"down[{shared}](mid[{own}](up[{shared}](q)))"
    desc = requests.get(f"{server.management_url}/workflows/one_apart", timeout=10).json()
    assert desc[0]["workflowDag"]["nodes"]["mid"]["shareWorkers"] is False


def test_models_whose_files_share_a_name_keep_apart(server):
    one, two, up = (worker_pids(server, f"clash__{n}") for n in ("one", "two", "up"))
    assert one.isdisjoint(two)
    assert up in (one, two)  # label_up.py clashes with neither: it joins the first
    r = requests.post(f"{server.inference_url}/wfpredict/clash", data=b"z", timeout=30)
    assert r.status_code == 200, r.text
    assert r.text.startswith("up[") and "two[" in r.text and "one[" in r.text


def test_a_model_with_another_model_config_keeps_apart(server):
    up, tuned = (worker_pids(server, f"configured__{n}") for n in ("up", "tuned"))
    assert up.isdisjoint(tuned)


def test_describe_says_the_workflow_shares_workers(server):
    desc = requests.get(f"{server.management_url}/workflows/together", timeout=10).json()
    assert desc[0]["workflowDag"]["shareWorkers"] is True
    nodes = desc[0]["nodes"]
    assert "sharesWorkersOf" not in nodes["up"]
    assert nodes["mid"]["sharesWorkersOf"] == nodes["down"]["sharesWorkersOf"] == "together__up"


def _unpacked(server, model: str) -> int:
    return sum(1 for p in Path(server.workdir).rglob(f"{model}-*") if p.is_dir())


def test_unregistering_stops_the_shared_worker_and_removes_every_model(server):
    before = _unpacked(server, "down")
    r = requests.post(server.management_url + "/workflows",
                      params={"url": "together.war", "workflow_name": "again"}, timeout=120)
    assert r.status_code == 200, r.text
    (pid,) = worker_pids(server, "again__up")
    assert _unpacked(server, "down") == before + 1
    r = requests.delete(f"{server.management_url}/workflows/again", timeout=60)
    assert r.status_code == 200, r.text
    assert wait_until(lambda: not pid_alive(pid), timeout=20)
    for node in ("up", "mid", "down"):
        assert requests.get(f"{server.management_url}/models/again__{node}",
                            timeout=10).status_code == 404
    assert _unpacked(server, "down") == before  # each model's own files are gone
    r = requests.post(f"{server.inference_url}/wfpredict/together", data=b"x", timeout=30)
    assert r.status_code == 200  # the other registration of the same archive is untouched


def test_a_model_that_fails_to_load_fails_the_registration_and_leaves_nothing(server):
    before = _unpacked(server, "up")
    r = requests.post(server.management_url + "/workflows", params={"url": "broken.war"},
                      timeout=120)
    assert r.status_code == 500, r.text
    assert "broken__refuses" in r.json()["message"]
    assert "this model refuses to load" in r.json()["message"]
    names = [m["modelName"] for m in requests.get(f"{server.management_url}/models",
                                                  timeout=10).json()["models"]]
    assert not [n for n in names if n.startswith("broken__")]
    assert _unpacked(server, "up") == before and _unpacked(server, "refuses") == 0
    r = requests.post(f"{server.inference_url}/wfpredict/together", data=b"x", timeout=30)
    assert r.status_code == 200  # the other workflows serve on


def test_share_workers_must_be_a_boolean():
    spec = "models:\n  a: {url: a.mar}\nworkflow:\n  share-workers: 'yes'\ndag:\n  a: []\n"
    with pytest.raises(SpecError, match=r":4:\d+: share-workers must be true or false"):
        load_spec(spec, name="w")


def test_models_with_files_of_the_same_name_are_put_apart(tmp_path):
    a, b, c, d, e, wf = (Path(f"/models/{n}") for n in ("a", "b", "c", "d", "e", "wf"))
    helper, handler = False, True
    files = {"a": {"model": (a, helper), "handler": (a, handler)},
             "b": {"model": (b, helper), "handler": (b, handler)},
             "c": {"tools": (c, helper), "handler": (c, handler)},  # handler.py: no clash
             "d": {"model": (d, helper), "tools": (d, helper)},
             "e": {"tools": (e, handler)},  # its handler is another's helper's name
             # two function nodes: the same file of the workflow's directory is no clash
             "f1": {"helpers": (wf, helper)}, "f2": {"helpers": (wf, helper)}}
    assert _apart_where_names_clash(list(files), files.__getitem__) == [
        ["a", "c", "f1", "f2"], ["b", "e"], ["d"]]
    (tmp_path / "handler.py").write_text("")
    (tmp_path / "model.py").write_text("")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.pt").write_bytes(b"")
    (tmp_path / "utils").mkdir()  # a namespace package: two of them would merge
    (tmp_path / "utils" / "io.py").write_text("")
    (tmp_path / "fast.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert sibling_modules(tmp_path, "handler") == {
        "handler": (tmp_path, True), "model": (tmp_path, False), "pkg": (tmp_path, False),
        "utils": (tmp_path, False), "fast": (tmp_path, False)}
