"""Workers on a real two-node Ray cluster started on this machine (``ray start --head`` and
a second ``ray start --address``), with two dagserve frontends on it: a model and a 3-node
workflow placed on both nodes (by custom resource and by node label; from model-config.yaml,
config.properties and the registration), answers checked through both frontends, the model's
files unpacked on the actors' node, batches and handler errors as for a local worker,
placements that cannot be served refused clearly, scaling of models and workflows, then one
node's worker processes killed: clear 5xx at once, recovery, and no process left at the end.

Skipped only when Ray is not installed (``make test`` installs ``dagserve[ray]``)."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from ray_cluster_utils import LocalRayCluster, ray_available
from server_utils import build_mar, build_war, pid_alive, start_server, wait_until

pytestmark = [pytest.mark.skipif(ray_available() is not None, reason=str(ray_available())),
              pytest.mark.timeout(600)]

TEXT = {"Content-Type": "text/plain"}
HTTP_TIMEOUT = 60  # s: a request that waits longer than this counts as a hang

ECHO_HANDLER = '''\
"""Echo with the greeting shipped in the archive; "refuse" is a 422 from the handler;
"sleep:<file>" creates the file, then takes 30 s; "batchsize" (any case) answers with the
size of the batch it came in, after 0.3 s."""
import time
from pathlib import Path

from dagserve.handler import PredictionException


def handle(data, context):
    if data is None:
        return None
    greeting = Path(context.system_properties["model_dir"], "greeting.txt").read_text().strip()
    out = []
    for row in data:
        value = row.get("data", row.get("body"))
        value = bytes(value).decode() if isinstance(value, (bytes, bytearray)) else str(value)
        if value == "refuse":
            raise PredictionException("refused on purpose", 422)
        if value.lower() == "batchsize":
            time.sleep(0.3)
            out.append(f"{greeting} batch of {len(data)}")
            continue
        if value.startswith("sleep:"):
            Path(value[6:]).touch()
            time.sleep(30)
        out.append(f"{greeting} {value}")
    return out
'''

# num_cpus is Ray's logical CPUs: small, so that many actors fit on 2-CPU nodes
ECHO_CONFIG = "ray:\n  num_cpus: 0.25\n  resources: {b: 1}\n"

WORKFLOW_HANDLER = '''\
def _text(value):
    return bytes(value).decode() if isinstance(value, (bytes, bytearray)) else str(value)


def upper(data, context):
    if data is None:
        return None
    return [_text(row.get("body", row.get("data"))).upper() for row in data]


def suffix(data, context):
    if data is None:
        return None
    return [_text(row["body"]) + "!" for row in data]
'''

WORKFLOW_SPEC = """\
models:
  min-workers: 1
  max-workers: 1
  batch-size: 4
  echo:
    url: echo.mar
dag:
  upper: [echo]
  echo: [suffix]
"""

# registration-time placement of the function nodes (config.properties ``models``)
MODELS = {"chain__upper": {"1.0": {"ray": {"num_cpus": 0.25,
                                           "label_selector": {"dagserve-node": "a"}}}},
          "chain__suffix": {"1.0": {"ray": {"num_cpus": 0.25, "resources": {"b": 1}}}}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("ray")
    cluster = LocalRayCluster(work, num_cpus=4)  # logical CPUs: room for every actor
    try:
        cluster.start_head()
        cluster.add_node("b")
        cluster.wait_nodes()
        yield cluster
    finally:
        cluster.stop()
        assert cluster.leftovers() == [], "Ray processes left after the cluster stopped"


@pytest.fixture(scope="module")
def frontends(cluster, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    build_mar(store, "echo", ECHO_HANDLER, config_yaml=ECHO_CONFIG,
              extra_files={"greeting.txt": "hello from the archive"})
    build_war(store, "chain", WORKFLOW_SPEC, WORKFLOW_HANDLER)
    build_mar(store, "nowhere", ECHO_HANDLER, config_yaml="ray:\n  resources: {c: 1}\n",
              extra_files={"greeting.txt": "-"})
    build_mar(store, "badenv", ECHO_HANDLER, extra_files={"greeting.txt": "-"},
              config_yaml="ray:\n  num_cpus: 0.25\n  runtime_env: {env_vars: {A: 1}}\n")
    # Both frontends start from the same configuration and store: the same registrations.
    config = {"ray_address": cluster.address, "models": MODELS,
              "load_models": "echo=echo.mar", "load_workflows": "chain.war",
              "default_workers_per_model": 1, "default_response_timeout": 60}
    servers = []
    try:
        for n in range(2):
            servers.append(start_server(tmp_path_factory.mktemp(f"frontend{n}"),
                                        model_store=store, config=config, timeout=240,
                                        env={"HOME": str(cluster.home)},
                                        args=["--disable-token-auth", "--enable-model-api",
                                              "--ncs"]))
        yield servers
    finally:
        codes = [(server.stop(), server.output()[-3000:]) for server in servers]
        assert all(code == 0 for code, _ in codes), codes
    # a frontend that stops takes its actors with it
    assert wait_until(lambda: not any(n.worker_pids("ModelActor")
                                      for n in cluster.nodes.values()), 30, 0.2)


def predict(server, path: str, body: str) -> requests.Response:
    return requests.post(f"{server.inference_url}/{path}", data=body.encode(), headers=TEXT,
                         timeout=HTTP_TIMEOUT)


def worker_pids(server, model: str) -> list[int]:
    reply = requests.get(f"{server.management_url}/models/{model}", timeout=HTTP_TIMEOUT)
    assert reply.status_code == 200, reply.text
    workers = [w for w in reply.json()[0]["workers"] if w["status"] == "READY"]
    assert all(len(w["rayNode"]) == 56 for w in workers), workers  # a Ray node id, in hex
    return [w["pid"] for w in workers]


def test_both_frontends_answer_from_actors_on_the_right_nodes(cluster, frontends):
    node_a, node_b = cluster.nodes["a"], cluster.nodes["b"]
    for server in frontends:
        reply = predict(server, "predictions/echo", "ray")
        assert reply.status_code == 200, reply.text
        assert reply.text == "hello from the archive ray"  # the archive's file, on the node
        reply = predict(server, "wfpredict/chain", "ray")
        assert reply.status_code == 200, reply.text
        assert reply.text == "hello from the archive RAY!"
        placement = {"echo": node_b, "chain__upper": node_a, "chain__echo": node_b,
                     "chain__suffix": node_b}
        for model, node in placement.items():
            pids = worker_pids(server, model)
            assert len(pids) == 1, (model, pids)
            assert set(pids) <= set(node.worker_pids()), f"{model} is not on node {node.name}"
    # every frontend has its own actors
    assert not set(worker_pids(frontends[0], "echo")) & set(worker_pids(frontends[1], "echo"))


def test_batches_and_handler_errors_are_those_of_a_local_worker(frontends):
    server = frontends[0]
    reply = predict(server, "predictions/echo", "refuse")
    assert reply.status_code == 422, reply.text
    assert "refused on purpose" in reply.json()["message"]
    bodies = [f"r{i}" for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda b: predict(server, "wfpredict/chain", b), bodies))
        assert [r.text for r in replies] == [f"hello from the archive {b.upper()}!"
                                             for b in bodies]
        # requests that reach a busy node go to its actor together: one Ray call per batch
        replies = list(pool.map(lambda b: predict(server, "wfpredict/chain", b),
                                ["batchsize"] * 12))
    sizes = [int(r.text.removeprefix("hello from the archive batch of ").rstrip("!"))
             for r in replies]
    assert max(sizes) > 1, sizes
    assert all(1 <= n <= 4 for n in sizes), sizes  # the spec's batch-size


def test_a_registration_places_its_model_over_the_archive_config(cluster, frontends):
    server = frontends[0]
    reply = requests.post(f"{server.management_url}/models",
                          params={"url": "echo.mar", "model_name": "echo_a",
                                  "initial_workers": 1,
                                  "ray": '{"resources": {"a": 1}, "num_cpus": 0.25}'},
                          timeout=HTTP_TIMEOUT)
    assert reply.status_code == 200, reply.text
    assert predict(server, "predictions/echo_a", "on a").text == "hello from the archive on a"
    pids = worker_pids(server, "echo_a")  # the archive says node b; the registration, a
    assert len(pids) == 1 and set(pids) <= set(cluster.nodes["a"].worker_pids())
    reply = requests.delete(f"{server.management_url}/models/echo_a", timeout=HTTP_TIMEOUT)
    assert reply.status_code == 200, reply.text
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 30, 0.2)


def test_a_placement_no_node_can_take_fails_registration_clearly(frontends):
    server = frontends[0]
    reply = requests.post(f"{server.management_url}/models",
                          params={"url": "nowhere.mar", "initial_workers": 1},
                          timeout=HTTP_TIMEOUT)
    assert reply.status_code == 500, reply.text
    assert "no live Ray node has 1 of resource 'c'" in reply.json()["message"], reply.text
    assert requests.get(f"{server.management_url}/models/nowhere",
                        timeout=HTTP_TIMEOUT).status_code == 404
    # options Ray itself refuses
    reply = requests.post(f"{server.management_url}/models",
                          params={"url": "badenv.mar", "initial_workers": 1},
                          timeout=HTTP_TIMEOUT)
    assert reply.status_code == 500, reply.text
    assert "Ray worker failed to start" in reply.json()["message"], reply.text
    assert "runtime_env['env_vars'] must be of type" in reply.json()["message"], reply.text


def test_scaling_models_and_workflows_adds_and_removes_actors(cluster, frontends):
    server = frontends[1]
    url = f"{server.management_url}/models/echo"
    reply = requests.put(url, params={"min_worker": 2, "synchronous": "true"},
                         timeout=HTTP_TIMEOUT)
    assert reply.status_code == 200, reply.text
    pids = worker_pids(server, "echo")
    assert len(pids) == 2 and set(pids) <= set(cluster.nodes["b"].worker_pids())
    reply = requests.put(url, params={"min_worker": 1, "synchronous": "true"},
                         timeout=HTTP_TIMEOUT)
    assert reply.status_code == 200, reply.text
    assert len(worker_pids(server, "echo")) == 1
    gone = set(pids) - set(worker_pids(server, "echo"))
    assert wait_until(lambda: not any(pid_alive(p) for p in gone), 30, 0.2)
    # a workflow's rescale: every node gets its actors, each on its node
    url = f"{server.management_url}/workflows/chain"
    reply = requests.put(url, params={"min_worker": 2, "max_worker": 2}, timeout=HTTP_TIMEOUT)
    assert reply.status_code == 200, reply.text
    for model, node in (("chain__upper", "a"), ("chain__echo", "b"), ("chain__suffix", "b")):
        pids = worker_pids(server, model)
        assert len(pids) == 2 and set(pids) <= set(cluster.nodes[node].worker_pids()), model
    assert predict(server, "wfpredict/chain", "x").text == "hello from the archive X!"
    reply = requests.put(url, params={"min_worker": 1, "max_worker": 1}, timeout=HTTP_TIMEOUT)
    assert reply.status_code == 200, reply.text
    assert [len(worker_pids(server, m)) for m in ("chain__upper", "chain__echo",
                                                  "chain__suffix")] == [1, 1, 1]


def test_killed_node_workers_fail_fast_then_come_back(cluster, frontends, tmp_path):
    node_b = cluster.nodes["b"]
    before = {id(s): worker_pids(s, "echo") for s in frontends}
    marker = tmp_path / "running"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(predict, frontends[0], "predictions/echo", f"sleep:{marker}")
        assert wait_until(marker.exists, HTTP_TIMEOUT, 0.05), "the slow request never ran"
        victims = node_b.worker_pids()
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        reply = slow.result()
    # the request the dead actor held failed as its death was seen (a missed death would
    # be a 504 after the 60 s response timeout)
    assert reply.status_code == 500, reply.text
    assert "Ray worker died" in reply.json()["message"], reply.text
    # at once: an answer, never a hang; a failure is a clear 5xx naming the worker
    for server in frontends:
        for path in ("predictions/echo", "wfpredict/chain"):
            start = time.monotonic()
            reply = predict(server, path, "again")
            assert time.monotonic() - start < HTTP_TIMEOUT
            assert reply.status_code == 200 or reply.status_code >= 500, reply.text
            if reply.status_code >= 500:
                assert reply.json()["message"], reply.text

    def recovered(server) -> bool:
        return (predict(server, "predictions/echo", "back").text == "hello from the archive back"
                and predict(server, "wfpredict/chain", "back").text
                == "hello from the archive BACK!")

    for server in frontends:
        assert wait_until(lambda: recovered(server), 180, 1.0), server.output()[-3000:]
        pids = worker_pids(server, "echo")
        assert pids and not set(pids) & set(before[id(server)])
        assert set(pids) <= set(node_b.worker_pids())  # the replacement is on node b again
