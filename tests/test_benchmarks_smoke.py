"""Smoke test of the benchmark suite's parts: the load generator against a tiny local aiohttp
server on 127.0.0.1, wrk's report parser, the process-tree RSS reader and the results table
writer. No timing is asserted: only counts, statuses and formatting."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from benchmarks.loadgen import LoadSpec, Target, run_load
from benchmarks.procstats import process_tree, tree_rss_bytes
from benchmarks.profile import parse_collapsed
from benchmarks.results import Table, fmt_ratio, format_table
from benchmarks.stats import LoadResult, percentile
from benchmarks.wrk import lua_string, parse_wrk_output, wrk_script


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type="application/octet-stream")


async def _chunked(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(body[:3])
    await resp.write(body[3:])
    await resp.write_eof()
    return resp


async def _fail(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"code": 503, "type": "X", "message": "no"}, status=503)


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    """An aiohttp app on a free loopback port, served from a background thread."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/echo", _echo)
    app.router.add_post("/chunked", _chunked)
    app.router.add_post("/fail", _fail)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def _spec(requests: int) -> LoadSpec:
    return LoadSpec(connections=4, duration_s=20.0, max_requests=requests, warmup_s=0.0)


def test_loadgen_counts_every_request(server_port: int) -> None:
    target = Target("127.0.0.1", server_port, "/echo", body=b'{"x": 1}')
    result = run_load(target, _spec(300))
    assert result.requests == 300
    assert result.errors == 0
    assert result.client == "python"
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms
    assert result.rps > 0 and result.client_cpu_s >= 0


def test_loadgen_reads_chunked_bodies_and_warms_up(server_port: int) -> None:
    target = Target("127.0.0.1", server_port, "/chunked", body=b"hello chunks")
    result = run_load(target, LoadSpec(connections=2, duration_s=20.0, max_requests=50,
                                       warmup_s=0.1), use_uvloop=False)
    assert (result.requests, result.errors) == (50, 0)


def test_loadgen_counts_non_2xx_and_connection_errors(server_port: int) -> None:
    result = run_load(Target("127.0.0.1", server_port, "/fail", body=b"x"), _spec(40))
    assert result.requests == 40 and result.errors == 40
    assert result.error_kinds == {"status 503": 40}

    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead = run_load(Target("127.0.0.1", dead_port, "/echo"),
                    LoadSpec(connections=1, duration_s=0.3, max_requests=10))
    assert dead.errors == dead.requests > 0
    assert all(kind.startswith("connect") for kind in dead.error_kinds)


def test_target_and_spec_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="only http"):
        Target.from_url("https://127.0.0.1/x")
    with pytest.raises(ValueError, match="connections"):
        LoadSpec(connections=0, duration_s=1, max_requests=1)
    t = Target.from_url("http://127.0.0.1:81/predictions/m?a=1", body=b"ab")
    raw = t.request_bytes()
    assert raw.startswith(b"POST /predictions/m?a=1 HTTP/1.1\r\n")
    assert b"Content-Length: 2\r\n" in raw and raw.endswith(b"\r\n\r\nab")


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    assert percentile(values, 100) == 100 and percentile([], 50) == 0.0


WRK_REPORT = """Running 2s test @ http://127.0.0.1:8080/predictions/echo
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.30us  120.00us   12.50ms   91.00%
    Req/Sec    15.10k   800.00    16.00k    70.00%
  Latency Distribution
     50%  480.00us
     75%  530.00us
     90%  610.00us
     99%    1.20ms
  30200 requests in 2.00s, 4.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  15100.00
Transfer/sec:      2.05MB
"""


def test_parse_wrk_report() -> None:
    r = parse_wrk_output(WRK_REPORT, connections=8, client_cpu_s=0.5)
    assert (r.requests, r.errors, r.connections) == (30200, 8, 8)
    assert r.error_kinds == {"socket read": 2, "socket timeout": 1, "status >= 400": 5}
    assert r.p50_ms == pytest.approx(0.48) and r.p99_ms == pytest.approx(1.2)
    assert r.max_ms == pytest.approx(12.5) and r.rps == pytest.approx(15100)
    assert r.client_cpu_pct == pytest.approx(25.0)


def test_wrk_script_escapes_body() -> None:
    assert lua_string(b'a"\n\\') == '"a\\034\\010\\092"'
    script = wrk_script(Target("h", 1, "/", body=b"\x00]]\xff", headers=(("X-A", "b"),)))
    assert 'wrk.body = "\\000]]\\255"' in script and 'wrk.headers["X-A"] = "b"' in script


def test_process_tree_rss_includes_this_process() -> None:
    pids = process_tree(os.getpid())
    assert pids[0] == os.getpid()
    assert tree_rss_bytes(os.getpid()) > 1024 * 1024


def test_results_table_format() -> None:
    table = Table(title="Echo", columns=["config", "req/s", "p50 ms", "note"])
    table.add_row(["c=1 b=1", 1234.5, 0.12345, "a|b"])
    table.add_row(["c=8 b=8", None, 2.0, 3])
    text = format_table(table)
    lines = text.splitlines()
    assert lines[0] == "| config | req/s | p50 ms | note |"
    assert lines[1] == "| --- | ---: | ---: | --- |"
    assert lines[2] == "| c=1 b=1 | 1,234 | 0.123 | a\\|b |"
    assert lines[3] == "| c=8 b=8 | n/a | 2.00 | 3 |"
    assert fmt_ratio(3.0, 1.5) == "2.00×" and fmt_ratio(1.0, 0.0) == "n/a"
    with pytest.raises(ValueError, match="4 columns"):
        table.add_row(["only one"])


def test_parse_py_spy_collapsed_stacks() -> None:
    raw = ('process 1:"python -m dagserve.engine.cli --foreground";main (cli.py:1);serve (s.py:2) 30\n'
           'process 1:"python -m dagserve.engine.cli";process 2:"python -m dagserve.engine.workers.main '
           '--settings {\\"model_name\\": \\"echo\\"}";loop (w.py:3);recv (p.py:4) 10\n'
           'garbage line\n')
    prof = parse_collapsed(raw.replace('\\"', '"'))
    assert prof.samples == 40
    assert prof.process_shares() == [("frontend", 75.0), ("worker (echo)", 25.0)]
    assert prof.top_self(1) == [("serve (s.py:2)", 75.0)]
    assert ("main (cli.py:1)", 75.0) in prof.top_inclusive()
    assert prof.top_files() == [("s.py", 75.0), ("p.py", 25.0)]


def test_load_result_derived_numbers() -> None:
    r = LoadResult(client="python", connections=1, requests=100, errors=10, elapsed_s=2.0,
                   p50_ms=1, p90_ms=2, p99_ms=3, mean_ms=1, max_ms=4, client_cpu_s=1.0)
    assert r.rps == 50 and r.ok_rps == 45 and r.client_cpu_pct == 50
