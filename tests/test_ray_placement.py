"""The parts of Ray placement that need no cluster: the ``ray:`` options of a model (parsed
and checked, also when no cluster is configured), the ``ray_address`` key and flag, the
zip a model is shipped in, whole frames in memory, and that Ray is never imported without
``ray_address``. The cluster itself: tests/test_ray_cluster.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import sys
import textwrap
import types

import pytest
import requests

from dagserve.archiver import unpack
from dagserve.engine import cli
from dagserve.engine.config import load_config
from dagserve.engine.errors import BadRequestError
from dagserve.engine.messages import Param, Request, Response
from dagserve.engine.properties import parse_properties
from dagserve.engine.workers import protocol
from dagserve.engine.workers.ray_cluster import _label_matches, zip_directory
from dagserve.engine.workers.ray_placement import RayPlacement, ray_param, ray_placement
from server_utils import ECHO_HANDLER, build_mar, free_port, start_server


def test_defaults_then_config_properties_model_config_registration_key_by_key():
    assert ray_placement({}, {}, "m") == RayPlacement()
    placement = ray_placement(
        {"ray": {"num_cpus": 0.5, "label_selector": {"zone": "eu-1"}}},
        {"ray": {"num_cpus": 2, "resources": {"gpu_box": 1}}}, "m")
    assert placement == RayPlacement(num_cpus=0.5, resources={"gpu_box": 1.0},
                                     label_selector={"zone": "eu-1"})
    assert placement.actor_options() == {
        "num_cpus": 0.5, "num_gpus": 0.0, "max_restarts": 0, "max_task_retries": 0,
        "resources": {"gpu_box": 1.0}, "label_selector": {"zone": "eu-1"}}
    assert placement.threads() == 1 and RayPlacement(num_cpus=3).threads() == 3
    assert ray_placement({"ray": {"num_cpus": 0.5}}, {}, "m", {"num_cpus": 3}).num_cpus == 3


@pytest.mark.parametrize("text, words", [
    ("{", ["Parameter ray must be a JSON object: "]),
    ("[1]", ["Parameter ray must be a JSON object, got '[1]'"]),
])
def test_the_ray_registration_parameter_is_a_json_object(text, words):
    assert ray_param(None) is None and ray_param("") is None
    assert ray_param('{"num_gpus": 1}') == {"num_gpus": 1}
    with pytest.raises(BadRequestError) as info:
        ray_param(text)
    for word in words:
        assert word in info.value.message


@pytest.mark.parametrize("section, words", [
    ("fast", ["model m (model-config.yaml)", "ray must be a mapping"]),
    ({"num_cpu": 1}, ["unknown ray option(s) num_cpu"]),
    ({"num_gpus": -1}, ["model m", "ray.num_gpus must be a number >= 0"]),
    ({"num_cpus": True}, ["ray.num_cpus must be a number"]),
    ({"resources": ["a"]}, ["ray.resources must be a mapping"]),
    ({"resources": {"a": "x"}}, ["ray.resources.a must be a number"]),
    ({"label_selector": {"zone": 1}}, ["ray.label_selector.zone must be a string"]),
])
def test_bad_options_name_the_model_and_the_key(section, words):
    with pytest.raises(BadRequestError) as info:
        ray_placement({"ray": section}, {}, "m")
    for word in words:
        assert word in info.value.message


def test_label_selector_values_match_as_ray_matches_them():
    labels = {"zone": "eu-1"}
    assert _label_matches(labels, "zone", "eu-1")
    assert not _label_matches(labels, "zone", "!eu-1")
    assert _label_matches(labels, "zone", "in(us-2, eu-1)")
    assert not _label_matches(labels, "zone", "!in(eu-1)")
    assert not _label_matches({}, "zone", "eu-1") and _label_matches({}, "zone", "!eu-1")


def test_ray_address_from_config_properties_and_flag(tmp_path):
    props = tmp_path / "config.properties"
    props.write_text("ray_address=ray://10.0.0.5:10001\n")
    assert load_config(config_file=props, environ={}).ray_address == "ray://10.0.0.5:10001"
    assert load_config(environ={}).ray_address is None
    args = cli.build_parser().parse_args(["--ts-config", str(props), "--ray-address", "auto"])
    assert cli.config_from_args(args).ray_address == "auto"


def test_a_model_directory_ships_as_a_zip_the_safe_unpacker_restores(tmp_path):
    src = tmp_path / "model"
    (src / "MAR-INF").mkdir(parents=True)
    (src / "MAR-INF" / "MANIFEST.json").write_text("{}")
    (src / "weights.bin").write_bytes(bytes(range(256)) * 64)
    archive = tmp_path / "shipped.zip"
    archive.write_bytes(zip_directory(src))
    out = unpack(archive, tmp_path / "out")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["MAR-INF/MANIFEST.json", "weights.bin"]
    assert (out / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()


def test_whole_frames_split_back_and_bad_ones_are_refused():
    requests_ = [Request("1", [Param("body", "text/plain", b"hi")]),
                 Request("2", [Param("data", None, b"\x00\x01")], {"h": "v"})]
    meta, body = protocol.split_frame(protocol.encode_predict(requests_))
    assert protocol.decode_predict(meta, body) == requests_
    frame = protocol.encode_result([Response("1", 200, b"ok")], [{"Name": "x"}])
    meta, body = protocol.split_frame(frame)
    assert protocol.decode_result(meta, body) == [Response("1", 200, b"ok")]
    assert meta["metrics"] == [{"Name": "x"}]
    for bad in (b"", frame[:5], frame + b"x", frame[:-1]):
        with pytest.raises(protocol.ProtocolError):
            protocol.split_frame(bad)


def test_without_ray_address_ray_is_never_imported(tmp_path):
    code = textwrap.dedent("""
        import asyncio, sys
        from dagserve.engine import cli, server
        from dagserve.engine.runtime import Runtime
        from dagserve.engine.tasks import TaskOwner
        import anyio

        cfg = cli.config_from_args(cli.build_parser().parse_args(["--ncs"]))
        assert cfg.ray_address is None

        async def main():
            async with anyio.create_task_group() as group:
                runtime = Runtime.build(cfg, TaskOwner(group))
                await runtime.stop()

        asyncio.run(main())
        print("ray" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_ray_options_are_checked_at_registration_and_kept_in_snapshots(tmp_path):
    """Without a cluster too: a bad option is a 400; the registration's are snapshotted
    and come back with the model after a restart."""
    store = tmp_path / "store"
    build_mar(store, "placed", ECHO_HANDLER, config_yaml="ray:\n  num_cpus: lots\n")
    build_mar(store, "echo", ECHO_HANDLER)
    args = ["--disable-token-auth", "--enable-model-api"]
    with start_server(tmp_path / "server", model_store=store, args=args) as server:
        models = f"{server.management_url}/models"
        reply = requests.post(models, params={"url": "placed.mar", "initial_workers": 1},
                              timeout=60)
        assert reply.status_code == 400, reply.text
        assert reply.json()["message"] == \
            "model placed: ray.num_cpus must be a number >= 0, got 'lots'"
        for ray, message in (("{", "Parameter ray must be a JSON object: "),
                             ('{"num_gpu": 1}', "unknown ray option(s) num_gpu")):
            reply = requests.post(models, params={"url": "echo.mar", "ray": ray}, timeout=60)
            assert reply.status_code == 400 and message in reply.json()["message"], reply.text
        assert requests.get(models, timeout=60).json()["models"] == []
        reply = requests.post(models, params={"url": "echo.mar", "initial_workers": 1,
                                              "ray": '{"resources": {"b": 1}}'}, timeout=60)
        assert reply.status_code == 200, reply.text

    def snapshotted() -> dict:
        newest = max((tmp_path / "server" / "logs" / "config").glob("*.cfg"))
        return json.loads(parse_properties(newest.read_text())["model_snapshot"])

    assert snapshotted()["models"]["echo"]["1.0"]["ray"] == {"resources": {"b": 1}}
    with start_server(tmp_path / "server", model_store=store, args=args) as server:
        assert requests.get(f"{server.management_url}/models/echo", timeout=60).ok
    assert snapshotted()["models"]["echo"]["1.0"]["ray"] == {"resources": {"b": 1}}


@pytest.mark.parametrize("address, words", [
    ("127.0.0.1:{port}", ["cannot connect to the Ray cluster at 127.0.0.1:", "refused"]),
    ("ray://127.0.0.1:{port}", ["cannot connect to the Ray cluster at ray://127.0.0.1:"]),
    ("nowhere", ["ray_address must be auto, host:port or ray://host:port, got 'nowhere'"]),
])
def test_a_ray_address_nothing_listens_on_stops_the_start_at_once(tmp_path, address, words):
    address = address.format(port=free_port())
    with pytest.raises(RuntimeError) as info:
        start_server(tmp_path, config={"ray_address": address}, args=["--ncs"])
    for word in words:
        assert word in str(info.value)


class _Ref:
    def __init__(self, future):
        self._future = future

    def future(self):
        return self._future


class _Method:
    def __init__(self, calls):
        self.calls = calls

    def remote(self, frame):
        future = concurrent.futures.Future()
        self.calls.append((frame, future))
        return _Ref(future)


def test_replies_that_overtake_the_running_batch_wait_for_it(tmp_path):
    """Ray delivers each call's reply through its own callback, so the reply of a held
    batch may reach the loop before the running batch's: every job still gets its own
    answer, in the order the actor ran them."""
    from dagserve.engine.workers.process import Job, WorkerSpec
    from dagserve.engine.workers.ray_worker import RayWorker

    async def scenario():
        loop = asyncio.get_running_loop()
        idle = []
        worker = RayWorker(WorkerSpec("m", tmp_path, "h"), cluster=None, model=None,
                           placement=RayPlacement(), sock_dir=tmp_path, gpu_id=None,
                           threads=1, log_file=None, tasks=None, launcher=None,
                           on_idle=idle.append,
                           on_exit=lambda w, reason: None)
        calls = []
        worker._actor = types.SimpleNamespace(predict=_Method(calls))
        worker._loop = loop
        batches = [[Job(Request(f"{b}.{i}", [Param("body", None, b"x")]), loop.create_future(),
                        0.0) for i in range(2)] for b in range(3)]
        for batch in batches:
            worker.dispatch(batch)
        assert len(calls) == 3 and worker.busy
        for index in (2, 1, 0):  # the replies arrive last batch first
            frame, future = calls[index]
            meta, body = protocol.split_frame(frame)
            reqs = protocol.decode_predict(meta, body)
            future.set_result(protocol.encode_result(
                [Response(r.id, 200, r.id.encode()) for r in reqs]))
            await asyncio.sleep(0.05)
        answers = [[(await job.future).value for job in batch] for batch in batches]
        assert answers == [[f"{b}.{i}".encode() for i in range(2)] for b in range(3)]
        assert not worker.busy and idle == [worker]

    asyncio.run(asyncio.wait_for(scenario(), 30))
