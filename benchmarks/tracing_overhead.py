"""What tracing costs: the echo model and the 3-node batched chain (scenarios (a) and (d)),
served by three builds side by side:

- ``before``: the code of a git ref without tracing (default ``main``), exported with
  ``git archive`` and put first on PYTHONPATH (the venv's editable install is found after
  it), so the same venv and client serve both;
- ``off``: this tree, requests not traced (the cost of the hooks alone);
- ``on``: this tree, every request sent with ``X-Dagserve-Trace: 1``.

The three take turns, round after round (a fresh server each time), so that a change in the
machine's load hits all of them alike; the median of the rounds is reported, of req/s and of
the frontend process's CPU time per request (user + system, from /proc: what the hooks cost
shows there even when a loaded machine makes throughput swing).

    .venv/bin/python -m benchmarks.tracing_overhead [--base-ref main] [--rounds 3]
        [--seconds 4] [--client auto|wrk|python]
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


def one_round(variant: str, env: dict[str, str], art, work: Path, seconds: float,
              client: str) -> dict[str, float]:
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
        headers = TRACE_HEADER if variant == "on" else ()
        out = {}
        for key, path in (("echo", "/predictions/echo8"), ("chain", "/wfpredict/chain3")):
            target = Target.from_url(server.inference + path, body=b"x" * 64,
                                     headers=headers)
            out[key], out[key + "_cpu"] = measure(target, seconds, client, server.pid)
        return out
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracing_overhead",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-ref", default="main", help="the build without tracing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "tracing")
    args = parser.parse_args(argv)
    client = args.client if args.client != "auto" else ("wrk" if wrk_available() else "python")
    args.out.mkdir(parents=True, exist_ok=True)
    art = build_artifacts(args.out)
    base_path = export_ref(args.base_ref, args.out / "base")
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    envs = {"before": {**plain, "PYTHONPATH": str(base_path)}, "off": plain, "on": plain}
    rates: dict[str, dict[str, list[float]]] = {
        v: {k: [] for k in ("echo", "chain", "echo_cpu", "chain_cpu")} for v in envs}
    for n in range(args.rounds):
        for variant, env in envs.items():
            got = one_round(variant, env, art, args.out, args.seconds, client)
            for key, rps in got.items():
                rates[variant][key].append(rps)
            print(f"round {n + 1} {variant:6s} echo {got['echo']:8.0f} req/s "
                  f"{got['echo_cpu']:6.1f} µs/req   chain {got['chain']:8.0f} req/s "
                  f"{got['chain_cpu']:6.1f} µs/req", flush=True)
    print(f"\nmedian of {args.rounds} rounds, {CONNECTIONS} connections, {args.seconds:g} s "
          f"each, client {client}, {os.cpu_count()} cores")
    print("| scenario | before (" + args.base_ref + ") | tracing off | tracing on (every "
          "request) | off vs before | on vs off |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for key, name in (("echo", "(a) echo, batch 8, 1 worker"),
                      ("chain", "(d) 3-node chain, batch 8")):
        for suffix, unit in (("", "req/s"), ("_cpu", "frontend CPU µs/request")):
            before, off, on = (statistics.median(rates[v][key + suffix])
                               for v in ("before", "off", "on"))
            print(f"| {name}, {unit} | {before:.1f} | {off:.1f} | {on:.1f} | "
                  f"{100 * (off / before - 1):+.1f} % | {100 * (on / off - 1):+.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
