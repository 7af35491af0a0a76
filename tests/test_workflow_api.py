"""Workflows against the real server: .war archives built with workflow-archiver, registered
through /workflows, run through /wfpredict: every DAG shape, node inputs and outputs,
retries, failures, timeouts, batching across requests, and registration while requests run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from model_builders import handler_archive
from server_utils import start_server

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
TEXT = {"Content-Type": "text/plain"}


def build_war(store: Path, name: str, spec: str, *, handler: Path = FIXTURES / "wf_handler.py",
              extra: list[Path] | None = None) -> subprocess.CompletedProcess:
    src = store.parent / f"src-{name}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "spec.yaml").write_text(textwrap.dedent(spec))
    cmd = [sys.executable, "-m", "dagserve.archiver.workflow_cli", "--workflow-name", name,
           "--spec-file", str(src / "spec.yaml"), "--handler", str(handler),
           "--export-path", str(store), "-f"]
    if extra:
        cmd += ["--extra-files", ",".join(str(e) for e in extra)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


SPECS = {
    "chain": """
        models:
          echo:
            url: echo.mar
        dag:
          pre: [echo]
          echo: [post]
    """,
    "diamond": """
        models:
          echo:
            url: echo.mar
        dag:
          pre: [left, echo]
          left: [join]
          echo: [join]
    """,
    "two_leaves": """
        models:
          min-workers: 1
        dag:
          pre: [left, right]
    """,
    "functions_only": """
        models:
          min-workers: 1
        dag:
          pre: [post]
    """,
    "model_first": """
        models:
          echo:
            url: echo.mar
        dag:
          echo: [post]
    """,
    "single": """
        models:
          echo:
            url: echo.mar
        dag:
          echo: []
    """,
    "retry": """
        models:
          retry-attempts: 2
        dag:
          pre: [flaky]
    """,
    "failing": """
        models:
          retry-attempts: 1
        dag:
          pre: [always_fail, slow]
    """,
    "timeout": """
        models:
          timeout-ms: 300
          retry-attempts: 0
        dag:
          pre: [slow]
    """,
    "batched": """
        models:
          batcher:
            url: batcher.mar
            batch-size: 8
            max-batch-delay: 500
        dag:
          pre: [batcher]
    """,
    "files": """
        models:
          min-workers: 1
        dag:
          model_dir_files: []
    """,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("workflows")
    models, wars = work / "model_store", work / "wf_store"
    models.mkdir()
    wars.mkdir()
    handler_archive("echo", "echo_handler.py", models)
    handler_archive("batcher", "batch_size_handler.py", models)
    for name, spec in SPECS.items():
        result = build_war(wars, name, spec, extra=[FIXTURES / "extra.txt"])
        assert result.returncode == 0, result.stderr
    other = work / "other" / "wf_handler.py"  # same file name, other functions
    other.parent.mkdir()
    other.write_text("def pre(data, context):\n    if data is None:\n        return None\n"
                     "    return ['other pre' for _ in data]\n")
    assert build_war(wars, "same_file_name", "models: {}\ndag:\n  pre: []\n",
                     handler=other).returncode == 0
    with start_server(work, model_store=models,
                      args=["--workflow-store", str(wars), "--disable-token-auth",
                            "--enable-model-api", "--ncs"], env={"WF_SLOW_S": "2"},
                      timeout=120) as srv:
        srv.wars = wars  # type: ignore[attr-defined]
        yield srv


def register(server, war: str, name: str | None = None) -> requests.Response:
    params = {"url": war}
    if name:
        params["workflow_name"] = name
    return requests.post(server.management_url + "/workflows", params=params, timeout=120)


def wfpredict(server, name: str, data=b"hello", **kw) -> requests.Response:
    kw.setdefault("headers", TEXT)
    return requests.post(f"{server.inference_url}/wfpredict/{name}", data=data, timeout=60, **kw)


@pytest.fixture(scope="module")
def registered(server):
    for name in SPECS:
        r = register(server, f"{name}.war")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == f"Workflow {name} has been registered and scaled successfully."
    return server


def test_chain_passes_outputs_along(registered):
    r = wfpredict(registered, "chain")
    assert r.status_code == 200, r.text
    assert r.text == "post(pre(hello))"


def test_chain_takes_put_multipart_and_form_input(registered):
    r = requests.put(f"{registered.inference_url}/wfpredict/chain", data=b"put", headers=TEXT,
                     timeout=30)
    assert r.text == "post(pre(put))"
    r = requests.post(f"{registered.inference_url}/wfpredict/chain",
                      files={"data": ("a.txt", b"multi", "text/plain")}, timeout=30)
    assert r.text == "post(pre(multi))"
    r = requests.post(f"{registered.inference_url}/wfpredict/chain", data={"data": "form"},
                      timeout=30)
    assert r.text == "post(pre(form))"


def test_diamond_fans_out_and_in_by_parent_name(registered):
    r = wfpredict(registered, "diamond")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["parents"] == ["echo", "left"]
    assert out["values"]["echo"] == "pre(hello)"
    assert json.loads(out["values"]["left"]) == {"branch": "left", "got": "pre(hello)"}


def test_two_leaves_merge_into_one_json_object(registered):
    r = wfpredict(registered, "two_leaves")
    assert r.status_code == 200
    assert r.json() == {"left": {"branch": "left", "got": "pre(hello)"},
                        "right": {"branch": "right", "got": "pre(hello)"}}


def test_function_only_model_first_and_single_node(registered):
    assert wfpredict(registered, "functions_only").text == "post(pre(hello))"
    assert wfpredict(registered, "model_first").text == "post(hello)"
    assert wfpredict(registered, "single").text == "hello"


def test_node_that_fails_then_succeeds_is_retried(registered):
    r = wfpredict(registered, "retry")
    assert r.status_code == 200, r.text
    assert r.text == "flaky ok: pre(hello)"


def test_node_that_always_fails_is_named(registered):
    r = wfpredict(registered, "failing")
    assert r.status_code == 500
    body = r.json()
    assert body["code"] == 500
    assert body["message"].startswith("Error executing always_fail")


def test_node_that_times_out_is_cancelled_and_named(registered):
    r = wfpredict(registered, "timeout")
    assert r.status_code == 500
    assert r.json()["message"].startswith("Error executing slow: timed out")


def test_concurrent_requests_reach_a_node_as_one_batch(registered):
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: wfpredict(registered, "batched"), range(6)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert max(r.json()["batch"] for r in results) > 1


def test_function_node_sees_the_war_extra_files_and_its_model_name(registered):
    out = wfpredict(registered, "files").json()
    assert "extra.txt" in out["files"]
    assert out["model_name"] == "files__model_dir_files"


def test_handler_files_with_the_same_name_keep_their_own_functions(registered):
    assert register(registered, "same_file_name.war").status_code == 200
    try:
        assert wfpredict(registered, "same_file_name").text == "other pre"
        assert wfpredict(registered, "chain").text == "post(pre(hello))"
    finally:
        requests.delete(registered.management_url + "/workflows/same_file_name", timeout=60)


def test_list_describe_and_node_models(registered):
    r = requests.get(registered.management_url + "/workflows", params={"limit": 2}, timeout=10)
    page = r.json()
    assert len(page["workflows"]) == 2
    assert page["nextPageToken"] is not None
    desc = requests.get(registered.management_url + "/workflows/chain", timeout=10).json()
    assert desc[0]["workflowName"] == "chain"
    assert (desc[0]["minWorkers"], desc[0]["maxWorkers"], desc[0]["batchSize"],
            desc[0]["maxBatchDelay"]) == (1, 1, 1, 50)
    assert desc[0]["workflowDag"]["start"] == "pre"
    models = requests.get(registered.management_url + "/models/chain__echo", timeout=10)
    assert models.status_code == 200
    r = requests.delete(registered.management_url + "/models/chain__echo", timeout=10)
    assert r.status_code == 409
    r = requests.put(registered.management_url + "/models/chain__echo",
                     params={"min_worker": 2}, timeout=10)
    assert r.status_code == 409
    assert wfpredict(registered, "chain").status_code == 200


def test_unknown_workflow(registered):
    r = wfpredict(registered, "nope")
    assert r.status_code == 404
    assert r.json()["message"] == "Workflow not found: nope"
    r = requests.get(registered.management_url + "/workflows/nope", timeout=10)
    assert r.status_code == 404


def test_same_name_twice_is_409(registered):
    r = register(registered, "chain.war")
    assert r.status_code == 409
    assert r.json()["message"] == "Workflow chain is already registered."


# every kind of invalid spec: (spec, what the message must name, the line it must name)
INVALID_SPECS = {
    "cycle": ("models: {}\ndag:\n  pre: [post]\n  post: [left]\n  left: [post]\n",
              "cycle", 5),
    "self_loop": ("models: {}\ndag:\n  pre: [pre]\n", "pre", 3),
    "two_starts": ("models: {}\ndag:\n  pre: [post]\n  left: [post]\n", "start", 3),
    "missing_fn": ("models: {}\ndag:\n  pre: [no_such_function]\n", "no_such_function", 3),
    "bad_type": ("models:\n  batch-size: eight\ndag:\n  pre: []\n", "batch-size", 2),
    "unknown_global": ("models:\n  batch-sise: 4\ndag:\n  pre: []\n", "batch-sise", 2),
    "no_url": ("models:\n  m1:\n    batch-size: 2\ndag:\n  m1: []\n", "url", 2),
    "yaml_syntax": ("models: {}\ndag:\n  pre: [post\n  post: []\n", "YAML", 4),
}


def write_war_by_hand(wars: Path, name: str, spec: str) -> None:
    """workflow-archiver refuses invalid specs, so build the .war the way an old tool might."""
    import zipfile

    manifest = {"createdOn": "01/01/2026 00:00:00",
                "workflow": {"workflowName": name, "specFile": "spec.yaml",
                             "handler": "wf_handler.py"}, "archiverVersion": "0.12.0"}
    with zipfile.ZipFile(wars / f"{name}.war", "w") as zf:
        zf.writestr("spec.yaml", spec)
        zf.write(FIXTURES / "wf_handler.py", "wf_handler.py")
        zf.writestr("WAR-INF/MANIFEST.json", json.dumps(manifest, indent=2))


@pytest.mark.parametrize("name", sorted(INVALID_SPECS))
def test_invalid_specs_are_400_with_line_numbers(registered, name):
    spec, names, line = INVALID_SPECS[name]
    write_war_by_hand(registered.wars, name, spec)
    r = register(registered, f"{name}.war")
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert names in message
    assert f"{name}.war/spec.yaml:{line}:" in message, message  # no server-private path
    listed = requests.get(registered.management_url + "/workflows", timeout=10).json()
    assert name not in [w["workflowName"] for w in listed["workflows"]]


@pytest.mark.parametrize("name", sorted(set(INVALID_SPECS) - {"missing_fn"}))
def test_workflow_archiver_refuses_an_invalid_spec_with_its_line(tmp_path, name):
    spec, names, line = INVALID_SPECS[name]
    result = build_war(tmp_path, name, spec)
    assert result.returncode != 0
    assert names in result.stderr
    assert f":{line}:" in result.stderr
    assert not (tmp_path / f"{name}.war").exists()


def test_missing_war_is_404(registered):
    r = register(registered, "no_such.war")
    assert r.status_code == 404


def test_register_and_unregister_while_requests_run(registered):
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def hammer() -> None:
        while not stop.is_set():
            r = wfpredict(registered, "chain")
            results.append((r.status_code, r.text))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert register(registered, "chain.war", name="chain_copy").status_code == 200
        assert wfpredict(registered, "chain_copy").text == "post(pre(hello))"
        r = requests.delete(registered.management_url + "/workflows/chain_copy", timeout=60)
        assert r.status_code == 200
        assert r.json()["status"] == 'Workflow "chain_copy" unregistered'
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert results and all(code == 200 and text == "post(pre(hello))" for code, text in results)
    assert requests.get(registered.management_url + "/models/chain_copy__echo",
                        timeout=10).status_code == 404


def test_requests_in_flight_when_a_workflow_goes_get_an_answer(registered):
    assert register(registered, "timeout.war", name="going").status_code == 200
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(wfpredict, registered, "going") for _ in range(3)]
        r = requests.delete(registered.management_url + "/workflows/going", timeout=60)
        assert r.status_code == 200
        answers = [f.result(timeout=60) for f in futures]
    for a in answers:
        assert a.status_code in (404, 500, 503), a.text
        assert a.json()["code"] == a.status_code


def test_workflows_survive_a_killed_server(tmp_path):
    models, wars = tmp_path / "model_store", tmp_path / "wf_store"
    models.mkdir()
    wars.mkdir()
    handler_archive("echo", "echo_handler.py", models)
    assert build_war(wars, "chain", SPECS["chain"]).returncode == 0
    args = ["--workflow-store", str(wars), "--disable-token-auth", "--enable-model-api"]
    first = start_server(tmp_path, model_store=models, args=args, timeout=120)
    try:
        assert register(first, "chain.war").status_code == 200
        assert requests.put(first.management_url + "/workflows/chain",
                            params={"min_worker": 2, "max_worker": 2}, timeout=60).status_code == 200
        assert wfpredict(first, "chain").text == "post(pre(hello))"
    finally:
        first.kill()
    with start_server(tmp_path, model_store=models, args=args, timeout=120) as second:
        assert wfpredict(second, "chain").text == "post(pre(hello))"
        desc = requests.get(second.management_url + "/models/chain__echo", timeout=10).json()
        assert desc[0]["minWorkers"] == 2
    with start_server(tmp_path, model_store=models, args=[*args, "--ncs"], timeout=120) as third:
        assert wfpredict(third, "chain").status_code == 404


def test_every_node_has_metrics(registered):
    def served(node_model: str) -> float:
        text = requests.get(registered.metrics_url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("ts_inference_requests_total{") and \
                    f'model_name="{node_model}"' in line:
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no ts_inference_requests_total for {node_model}")

    before = {n: served(f"chain__{n}") for n in ("pre", "echo", "post")}
    for _ in range(3):
        assert wfpredict(registered, "chain").status_code == 200
    for node, count in before.items():
        assert served(f"chain__{node}") == count + 3, node
