"""What tracing costs: the echo model and the 3-node batched chain (scenarios (a) and (d)),
served by three builds side by side:

- ``before``: the code of a git ref without tracing (default ``main``), exported with
  ``git archive`` and put first on PYTHONPATH (the venv's editable install is found after
  it), so the same venv and client serve both;
- ``off``: this tree, requests not traced (the cost of the hooks alone);
- ``on``: this tree, every request sent with ``X-Dagserve-Trace: 1``.

Both servers stay up for the whole run; short runs take turns (before, off, on; echo then
chain) for ``--pairs`` rounds, and each round gives the ratios off/before and on/off of
runs made seconds apart, so the slow swings of a shared machine's load cancel out. Reported:
the median ratio over the rounds (with the lowest and highest), the median req/s, and the
frontend process's CPU time per request (user + system from /proc, warmup included).

    .venv/bin/python -m benchmarks.tracing_overhead [--base-ref main] [--pairs 12]
        [--seconds 2] [--client auto|wrk|python]
    .venv/bin/python -m benchmarks.tracing_overhead --micro   # the bookkeeping alone

``--micro`` times, in this process, what a traced 3-node request adds to the frontend: a
trace begun and ended (kept in the ring), three attempts started, dispatched and finished;
no server, no I/O.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

from .artifacts import build_artifacts
from .loadgen import LoadSpec, Target, run_load
from .procstats import process_cpu_seconds
from .servers import Ports, ServerProcess, dagserve_command, free_ports, write_config
from .wrk import run_wrk, wrk_available

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TRACE_HEADER = (("X-Dagserve-Trace", "1"),)
CONNECTIONS = 32


def export_ref(ref: str, dest: Path) -> Path:
    """``ref``'s dagserve package as an importable tree: ``dest/pkg/dagserve/...``."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref, "dagserve", "engine",
                              "archiver", "workflows"], cwd=REPO, capture_output=True,
                             check=True).stdout
    src = dest / "src"
    shutil.rmtree(dest, ignore_errors=True)
    src.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(src, filter="data")
    pkg = dest / "pkg" / "dagserve"
    shutil.copytree(src / "dagserve", pkg)
    for name in ("engine", "archiver", "workflows"):
        (pkg / name).symlink_to(src / name, target_is_directory=True)
    return dest / "pkg"


def measure(target: Target, seconds: float, client: str, frontend_pid: int) -> tuple[float,
                                                                                    float]:
    """(req/s, frontend CPU µs per request) of one run; the CPU is taken over the whole run
    (warmup included) and divided by every request it served."""
    spec = LoadSpec(connections=CONNECTIONS, duration_s=seconds, max_requests=2_000_000,
                    warmup_s=1.0)
    cpu0 = process_cpu_seconds(frontend_pid)
    load = run_wrk(target, spec) if client == "wrk" else run_load(target, spec)
    cpu = process_cpu_seconds(frontend_pid) - cpu0
    if load.errors:
        raise RuntimeError(f"{load.errors} errors against {target.url}: {load.error_kinds}")
    served = load.rps * (seconds + 1.0)
    return load.rps, cpu / served * 1e6


def start_server(variant: str, env: dict[str, str], art, work: Path) -> ServerProcess:
    ports = Ports(*free_ports())
    config = write_config(work / f"{variant}.properties", ports, art.store)
    server = ServerProcess(variant, dagserve_command(config, art.store, f"echo={art.echo_mar}"),
                           work / variant, ports, env)
    server.start()
    try:
        server.wait_first_inference("/predictions/echo", b"x")
        server.register_model("echo8", art.echo_mar, batch_size=8, max_batch_delay_ms=5,
                              workers=1)
        reply = server.register_workflow(art.chain_batched, "chain3")
        if reply.status != 200:
            raise RuntimeError(f"registering chain3: {reply.message()}")
    except BaseException:
        server.stop()
        raise
    return server


PATHS = {"echo": "/predictions/echo8", "chain": "/wfpredict/chain3"}
RUNS = (("before", "before", ()), ("off", "after", ()), ("on", "after", TRACE_HEADER))


def micro(n: int = 30_000) -> float:
    """Microseconds of trace bookkeeping per traced 3-node request (see the docstring)."""
    import time

    from dagserve.engine.messages import Param, Request
    from dagserve.engine.tracing import Tracer

    class Model:
        name, version = "wf__node", "1.0"

    tracer, model = Tracer(), Model()
    params = [Param("body", None, b"x" * 64)]
    order = {"a": None, "b": None, "c": None}
    targets = dict.fromkeys(order, model)
    start = time.perf_counter()
    for i in range(n):
        trace = tracer.begin("workflow", "wf", Request(str(i), params, {}))
        trace.expect(order, targets, "1.0")
        for node in order:
            attempt = trace.attempt(node, model, 1, params)
            attempt.dispatched(0.0001, 8, "9000")
            attempt.finish("ok", 200, "", 64, 0.0001)
        tracer.end(trace, 200)
    return (time.perf_counter() - start) / n * 1e6


def _spread(values: list[float]) -> str:
    return (f"{100 * (statistics.median(values) - 1):+.1f} % "
            f"({100 * (min(values) - 1):+.0f} … {100 * (max(values) - 1):+.0f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracing_overhead",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-ref", default="main", help="the build without tracing")
    parser.add_argument("--pairs", type=int, default=12, help="rounds of before/off/on")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured s per run")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "tracing")
    parser.add_argument("--micro", action="store_true",
                        help="only time the trace bookkeeping in-process")
    args = parser.parse_args(argv)
    if args.micro:
        print(f"trace bookkeeping: {micro():.2f} µs per traced 3-node request")
        return 0
    client = args.client if args.client != "auto" else ("wrk" if wrk_available() else "python")
    args.out.mkdir(parents=True, exist_ok=True)
    art = build_artifacts(args.out)
    base_path = export_ref(args.base_ref, args.out / "base")
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    servers: dict[str, ServerProcess] = {}
    try:
        servers["before"] = start_server("before", {**plain, "PYTHONPATH": str(base_path)},
                                         art, args.out)
        servers["after"] = start_server("after", plain, art, args.out)
        got = {(v, k): [] for v, _, _ in RUNS for k in PATHS}
        for n in range(args.pairs):
            for key, path in PATHS.items():
                for variant, which, headers in RUNS:
                    server = servers[which]
                    target = Target.from_url(server.inference + path, body=b"x" * 64,
                                             headers=headers)
                    got[variant, key].append(measure(target, args.seconds, client,
                                                     server.pid))
            print(f"round {n + 1}: " + "  ".join(
                f"{k} {v} {got[v, k][-1][0]:.0f}/s {got[v, k][-1][1]:.0f}µs"
                for k in PATHS for v, _, _ in RUNS), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    print(f"\n{args.pairs} rounds, {CONNECTIONS} connections, {args.seconds:g} s per run "
          f"after 1 s warmup, client {client}, {os.cpu_count()} cores")
    print(f"| scenario | req/s before ({args.base_ref}) | req/s tracing off | req/s tracing "
          "on | off vs before, req/s | on vs off, req/s | frontend µs/request before / off "
          "/ on |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, name in (("echo", "(a) echo, batch 8, 1 worker"),
                      ("chain", "(d) 3-node chain, batch 8")):
        rps = {v: [r for r, _ in got[v, key]] for v, _, _ in RUNS}
        cpu = {v: [c for _, c in got[v, key]] for v, _, _ in RUNS}
        off_before = [o / b for o, b in zip(rps["off"], rps["before"])]
        on_off = [o / f for o, f in zip(rps["on"], rps["off"])]
        print(f"| {name} | {statistics.median(rps['before']):.0f} | "
              f"{statistics.median(rps['off']):.0f} | {statistics.median(rps['on']):.0f} | "
              f"{_spread(off_before)} | {_spread(on_off)} | "
              + " / ".join(f"{statistics.median(cpu[v]):.1f}" for v in ("before", "off", "on"))
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
