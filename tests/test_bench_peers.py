"""Smoke test of the side-by-side benchmark's own code, without Triton or Ray Serve installed:
the generated Triton model repository and request, the server layout and command line, the
Ray Serve app script's names, the --peer parsing, and the measuring sequence driven against a
tiny real echo server (a subprocess on 127.0.0.1). No timing is asserted."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from benchmarks import rayserve_app
from benchmarks.peer import PeerError
from benchmarks.peer_drivers import BODY_1K, Driver
from benchmarks.peer_rayserve import APP_SCRIPT, RayServeInstall, rayserve_command
from benchmarks.peer_triton import (ECHO_MODEL_PY, TritonInstall, chain_models, ensemble_config,
                                    infer_request, prepare_server, triton_command,
                                    write_model_repository)
from benchmarks.scenarios import Budget
from benchmarks.servers import Ports, ServerProcess, free_ports
from benchmarks.side_by_side import best_of, goals, measure_server, parse_peers, render


def test_triton_model_repository(tmp_path: Path) -> None:
    repo = write_model_repository(tmp_path / "repo", chains=(1, 3))
    assert sorted(p.name for p in repo.iterdir()) == ["chain1", "chain3", "echo", "node1",
                                                      "node2", "node3"]
    for name in ("echo", "node1", "node2", "node3"):
        config = (repo / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in config and 'backend: "python"' in config
        assert "TYPE_UINT8" in config and "KIND_CPU" in config
        model = (repo / name / "1" / "model.py").read_text()
        assert model == ECHO_MODEL_PY
        compile(model, "model.py", "exec")
    chain = (repo / "chain3" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in chain and (repo / "chain3" / "1").is_dir()
    # the steps in order, each output feeding the next input, INPUT in and OUTPUT out
    steps = re.findall(r'model_name: "(\w+)".*?input_map \{ key: "INPUT" value: "(\w+)" \}'
                       r'.*?output_map \{ key: "OUTPUT" value: "(\w+)" \}', chain, re.S)
    assert steps == [("node1", "INPUT", "t1"), ("node2", "t1", "t2"), ("node3", "t2", "OUTPUT")]
    assert chain_models(3) == ["node1", "node2", "node3", "chain3"]
    with pytest.raises(ValueError):
        ensemble_config("empty", [])
    # rewriting starts from scratch
    write_model_repository(repo, chains=(1,))
    assert not (repo / "chain3").exists()


def test_triton_binary_infer_request() -> None:
    body, headers = infer_request(BODY_1K)
    (name, length), = headers
    assert name == "Inference-Header-Content-Length"
    header = json.loads(body[:int(length)])
    assert body[int(length):] == BODY_1K and len(BODY_1K) == 1024
    assert header["inputs"] == [{"name": "INPUT", "shape": [1024], "datatype": "UINT8",
                                 "parameters": {"binary_data_size": 1024}}]
    assert header["outputs"][0]["parameters"]["binary_data"] is True


def test_triton_server_layout_and_command(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "bin").mkdir(parents=True)
    (dist / "bin" / "tritonserver").write_text("binary")
    (dist / "backends" / "python").mkdir(parents=True)
    (dist / "python_backend_stubs" / "3.11").mkdir(parents=True)
    (dist / "python_backend_stubs" / "3.11" / "triton_python_backend_stub").write_text("stub")
    dest = prepare_server(dist, tmp_path / "server", "3.11")
    assert (dest / "backends" / "python" / "triton_python_backend_stub").read_text() == "stub"
    assert not (dest / "python_backend_stubs").exists()
    with pytest.raises(PeerError, match="no python-backend stub for Python 3.9"):
        prepare_server(dist, tmp_path / "other", "3.9")
    install = TritonInstall(tmp_path, "0.7.0", dest, tmp_path / "libs")
    cmd = triton_command(install, tmp_path / "repo", 1001, 1002, 1003)
    assert cmd[0] == str(dest / "bin" / "tritonserver")
    for flag in ("--http-address=127.0.0.1", "--http-port=1001", "--grpc-address=127.0.0.1",
                 "--grpc-port=1002", "--metrics-address=127.0.0.1", "--metrics-port=1003",
                 "--model-control-mode=explicit", "--load-model=echo",
                 f"--model-repository={tmp_path / 'repo'}"):
        assert flag in cmd


def test_rayserve_app_names_and_command(tmp_path: Path) -> None:
    assert [rayserve_app.chain_length(a) for a in ("echo", "chain1", "chain3")] == [1, 1, 3]
    for bad in ("chain0", "chain", "other", "chain10"):
        with pytest.raises(ValueError):
            rayserve_app.chain_length(bad)
    compile(APP_SCRIPT.read_text(), str(APP_SCRIPT), "exec")
    cmd = rayserve_command(RayServeInstall(tmp_path, "2.60.0"), 4242, ("echo", "chain3"))
    assert cmd == [str(tmp_path / "bin" / "python"), str(APP_SCRIPT), "--port", "4242",
                   "--deploy", "echo", "--deploy", "chain3"]


def test_parse_peers() -> None:
    assert parse_peers("triton, rayserve,triton") == ["triton", "rayserve"]
    assert parse_peers("") == [] and parse_peers(None) == []
    with pytest.raises(ValueError, match="unknown peer kserve"):
        parse_peers("triton,kserve")


ECHO_SERVER = """
import sys
from aiohttp import web
async def echo(request):
    return web.Response(body=await request.read())
app = web.Application()
for path in ("/echo", "/chain1", "/chain3"):
    app.router.add_post(path, echo)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


class EchoDriver(Driver):
    """Every application is the same echo route of a tiny aiohttp server."""

    name = "dagserve"
    version = "test"

    def __init__(self, tmp: Path):
        port = free_ports(1)[0]
        self.server = ServerProcess("echo", [sys.executable, "-c", ECHO_SERVER, str(port)], tmp,
                                    Ports(port, port, port))
        self.calls: list[str] = []

    def request(self, app: str):
        from benchmarks.loadgen import Target
        return Target("127.0.0.1", self.server.ports.inference, f"/{app}", body=BODY_1K)

    def add(self, app: str) -> None:
        self.calls.append(f"add {app}")

    def remove(self, app: str) -> None:
        self.calls.append(f"remove {app}")


def test_measure_server_sequence_and_report(tmp_path: Path) -> None:
    driver = EchoDriver(tmp_path)
    driver.server.start()
    try:
        res = measure_server(driver, Budget(0.3, 0.0, 300, "python"), log=lambda _m: None)
    finally:
        driver.server.stop()
    assert driver.calls == ["remove echo", "add chain3", "add chain1"]
    for key in ("echo_c32", "echo_c1", "chain3_c32", "chain3_c1", "chain1_c1"):
        assert res[key]["requests"] > 0 and res[key]["errors"] == 0
    assert res["memory_echo"]["pss_mib"] > 0 and res["memory_echo"]["processes"] >= 1
    assert res["per_hop_p50_ms"] == pytest.approx(
        (res["chain3_c1"]["p50_ms"] - res["chain1_c1"]["p50_ms"]) / 2, abs=1e-4)
    assert best_of([res])["per_hop_p50_ms"] == res["per_hop_p50_ms"]
    res = best_of([res])
    triton = dict(res, server="Triton", version="t")
    text = render([res, triton, {"server": "Ray Serve", "version": "r", "error": "boom"}],
                  {"x": "why\nmore"}, "cmd", "client", Budget(0.3, 0.0, 300, "python"))
    assert "## Side by side with Triton and Ray Serve" in text
    assert "| echo, 32 connections: req/s |" in text
    assert "| 3-node chain, 32 connections: req/s |" in text and "PSS (MiB) by process" in text
    assert "Ray Serve did not complete: boom" in text and "x was not run: why" in text
    verdicts = [g["met"] for g in goals(res, triton)]
    assert verdicts == [True, False, True, True]  # equal servers: only 1.5x is out of reach


def test_best_of_rounds_keeps_each_runs_least_disturbed_round() -> None:
    def run(rps, p50):
        return {"rps": rps, "p50_ms": p50, "errors": 0}

    def result(rps, p50, pss):
        return {"server": "s", "version": "v", "load_avg": "1.0, 1, 1", "load_avg_end": "2.0, 1, 1",
                "first_echo_s": p50, "echo_c32": run(rps, p50), "echo_c1": run(rps, p50),
                "chain3_c32": run(rps, p50), "chain3_c1": run(rps, 3 * p50),
                "chain1_c1": run(rps, p50), "memory_echo": {"pss_mib": pss},
                "memory_chain3": {"pss_mib": pss}}

    rounds = [result(100, 2.0, 50), result(200, 1.0, 60), {"error": "x"}]
    rounds[0]["per_hop_p50_ms"], rounds[1]["per_hop_p50_ms"] = 0.5, 0.7
    best = best_of(rounds)
    assert best["echo_c32"]["rps"] == 200 and best["echo_c1"]["p50_ms"] == 1.0
    assert best["per_hop_p50_ms"] == 0.5  # a round's own difference, not one of mixed rounds
    assert best["memory_echo"]["pss_mib"] == 50 and len(best["rounds"]) == 3
    assert best["load_1min"] == "1.0 to 2.0; 1.0 to 2.0"
    assert best_of([{"error": "x"}]) == {"error": "x"}


def test_sections_are_written_and_kept_by_their_own_markers(tmp_path: Path) -> None:
    from benchmarks.protocols import kept_section, write_section
    from benchmarks.side_by_side import SECTION_END, SECTION_START
    results = tmp_path / "RESULTS.md"
    results.write_text("# report\n")
    write_section(results, "protocols v1")
    write_section(results, "peers v1", start=SECTION_START, end=SECTION_END)
    write_section(results, "peers v2", start=SECTION_START, end=SECTION_END)
    text = results.read_text()
    assert text.count(SECTION_START) == 1 and "peers v1" not in text and "protocols v1" in text
    kept = kept_section(results, start=SECTION_START, end=SECTION_END)
    assert kept.startswith(SECTION_START) and "peers v2" in kept and "protocols" not in kept
