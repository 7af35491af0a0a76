"""``python -m benchmarks.run``: build the archives, start the server(s), run the scenarios,
judge the targets, profile the misses, and write ``benchmarks/RESULTS.md``.

    python -m benchmarks.run                      # everything, dagserve only (~3-4 min)
    python -m benchmarks.run --quick              # 1 s per run (~1-2 min)
    python -m benchmarks.run --scenarios a,c      # a subset
    python -m benchmarks.run --peer torchserve    # also TorchServe 0.12.0, side by side
    python -m benchmarks.run --peer triton,rayserve   # then dagserve next to Triton and Ray
                                                      # Serve (benchmarks.side_by_side)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .artifacts import BenchArtifacts, build_artifacts
from .machine import machine_info
from .peer import DEFAULT_VENV, PeerError, TorchServeInstall, ensure_torchserve, torchserve_env
from .profile import ProfileError, find_py_spy, start_record
# sections written by hand from other benchmarks' runs, kept when this run rewrites the file
MEMORY_START = "<!-- memory: written by hand from python -m benchmarks.memory -->"
MEMORY_END = "<!-- memory: end -->"
TRACING_START = "<!-- tracing: written by hand from python -m benchmarks.tracing_overhead -->"
TRACING_END = "<!-- tracing: end -->"
from .protocols import SECTION_END as PROTOCOLS_END
from .protocols import SECTION_START as PROTOCOLS_START
from .protocols import kept_section
from .report import (DAGSERVE, TORCHSERVE, Check, RunInfo, ServerInfo, evaluate_targets,
                     render_results)
from .scenarios import (ECHO_BODY, SCENARIOS, Budget, ScenarioResult, deployed, measure,
                        run_scenario)
from .side_by_side import ANALYSIS_END, ANALYSIS_START
from .side_by_side import SECTION_END as PEERS_END
from .side_by_side import SECTION_START as PEERS_START
from .side_by_side import parse_peers, run_side_by_side
from .servers import (Ports, ServerError, ServerProcess, dagserve_command, free_ports,
                      torchserve_command, write_config)
from .wrk import wrk_available

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MAX_PROFILES = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description="Run dagserve's benchmark scenarios.")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma list of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="1 s per run after a 0.3 s warmup (a smoke run, noisy figures)")
    parser.add_argument("--peer", default="",
                        help="comma list of torchserve (TorchServe 0.12.0 through every "
                             "scenario, installed once into benchmarks/.venv-torchserve), "
                             "triton, rayserve (then benchmarks.side_by_side: echo, chain, per "
                             "hop and memory next to NVIDIA Triton / Ray Serve, each in its own "
                             "venv under benchmarks/)")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto",
                        help="load client: wrk when on PATH (auto), or the Python one")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, help="warmup seconds per run (default 1)")
    parser.add_argument("--max-requests", type=int, default=200_000,
                        help="request budget per run, Python client only (default 200000)")
    parser.add_argument("--diamond-ms", default="20,40",
                        help="the diamond's two branch delays in ms (default 20,40)")
    parser.add_argument("--out", type=Path, default=HERE / "out",
                        help="work directory: archives, server logs, results.json")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md",
                        help="where to write the report (default benchmarks/RESULTS.md)")
    parser.add_argument("--no-profile", action="store_true",
                        help="do not profile the server when a target is missed")
    parser.add_argument("--torchserve-venv", type=Path, default=DEFAULT_VENV,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.peers = parse_peers(args.peer)
    except ValueError as exc:
        parser.error(f"--peer: {exc}")
    keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SCENARIOS]
    if not keys or unknown:
        parser.error(f"--scenarios: unknown {', '.join(unknown) or '(empty)'}; "
                     f"choose from {', '.join(SCENARIOS)}")
    args.scenario_keys = [k for k in SCENARIOS if k in keys]
    try:
        ms = tuple(int(x) for x in args.diamond_ms.split(","))
    except ValueError:
        ms = ()
    if len(ms) != 2 or min(ms) < 0:
        parser.error(f"--diamond-ms must be two whole numbers >= 0 like 20,40, got "
                     f"{args.diamond_ms!r}")
    args.diamond = ms
    args.seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    if args.seconds <= 0 or args.warmup < 0 or args.max_requests < 1:
        parser.error("--seconds must be > 0, --warmup >= 0, --max-requests >= 1")
    if args.client == "wrk" and wrk_available() is None:
        parser.error("--client wrk: wrk is not on PATH (apt-get install -y wrk)")
    return args


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class ServerSetup:
    """How to start one server kind."""

    name: str
    version: str
    command: Callable[[Path, Path, str], list[str]]
    env: dict[str, str] | None = None
    scenario_kwargs: dict | None = None


def start_server(setup: ServerSetup, art: BenchArtifacts, out: Path) -> tuple[ServerProcess,
                                                                             ServerInfo]:
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    ports = Ports(*free_ports(3))
    workdir = out / setup.name.lower()
    config = write_config(workdir / "config.properties", ports, art.store)
    server = ServerProcess(setup.name, setup.command(config, art.store,
                                                     f"echo={art.echo_mar}"), workdir, ports)
    if setup.env is not None:
        server.env = setup.env
    log(f"starting {setup.name}: {' '.join(server.argv)}")
    server.start()
    try:
        first = server.wait_first_inference("/predictions/echo", ECHO_BODY)
    except ServerError:
        server.stop()
        raise
    info = ServerInfo(setup.name, setup.version, first, server.sample().rss_bytes,
                      load_avg=load_avg)
    log(f"  {setup.name} answered its first inference {first:.2f} s after start "
        f"(RSS {info.idle_rss_bytes / 2**20:.0f} MiB)")
    return server, info


def run_server(setup: ServerSetup, art: BenchArtifacts, args: argparse.Namespace,
               budget: Budget) -> tuple[ServerProcess | None, ServerInfo, dict[str, ScenarioResult]]:
    """Start a server and run the chosen scenarios on it (the server is left running)."""
    try:
        server, info = start_server(setup, art, args.out)
    except ServerError as exc:
        log(f"{setup.name} did not start: {exc}")
        reason = f"{setup.name} did not start: {str(exc).splitlines()[0]}"
        return None, ServerInfo(setup.name, setup.version, None, 0, reason), {
            k: ScenarioResult(k, setup.name, skipped=reason) for k in args.scenario_keys}
    results: dict[str, ScenarioResult] = {}
    try:
        for key in args.scenario_keys:
            log(f"{setup.name}: scenario {SCENARIOS[key][0]}")
            kwargs = (setup.scenario_kwargs or {}).get(key, {})
            results[key] = run_scenario(key, server, art, budget, log, args.quick, **kwargs)
            if results[key].skipped:
                log(f"  n/a: {results[key].skipped}")
    except BaseException:
        server.stop()
        raise
    return server, info, results


def profile_misses(server: ServerProcess, checks: list[Check], budget: Budget,
                   out: Path) -> str:
    """Profile the load behind each missed target (py-spy); returns a note when impossible."""
    if find_py_spy() is None:
        return ("py-spy is not installed (`.venv/bin/pip install py-spy`); a cProfile of the "
                "frontend cannot be taken from outside the process, so there is no profile")
    done = 0
    for check in checks:
        if check.target.met is not False or check.probe is None or done >= MAX_PROFILES:
            continue
        dep, conns = check.probe
        done += 1
        log(f"profiling the server for '{check.target.name}': POST {dep.path} at {conns} "
            f"connection(s)")
        try:
            with deployed(server, dep):
                recording = start_record(server.pid, budget.seconds,
                                         out / "profiles" / f"{dep.name}.txt")
                time.sleep(0.3)  # let py-spy attach before the load starts
                measure(server, dep, conns, Budget(budget.seconds + 0.5, 0.0,
                                                   budget.max_requests, budget.client))
                check.profile = recording.finish()
        except (ProfileError, ServerError) as exc:
            check.profile_error = str(exc)
            log(f"  no profile: {exc}")
    return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    wrk = wrk_available()
    client = "wrk" if args.client == "wrk" or (args.client == "auto" and wrk) else "python"
    budget = Budget(args.seconds, args.warmup, args.max_requests, client)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info(wrk)
    notes: list[str] = []
    log(f"building archives into {args.out / 'store'}")
    art = build_artifacts(args.out.resolve(), args.diamond)
    if art.cnn is None and "b" in args.scenario_keys:
        log(f"  scenario (b) will be skipped: {art.cnn_skip_reason}")

    setups: list[ServerSetup] = []
    if "torchserve" in args.peers:
        try:
            install = ensure_torchserve(args.torchserve_venv, log)
            machine["TorchServe"] = (f"{install.version} (torch {install.torch_version}, "
                                     f"{install.java})")
            setups.append(_torchserve_setup(install))
        except PeerError as exc:
            log(f"TorchServe is not available: {exc}")
            notes.append(f"TorchServe peer not run: {exc}")
    setups.append(ServerSetup(DAGSERVE, _dagserve_version(),
                              lambda cfg, store, preload: dagserve_command(cfg, store, preload)))

    results: dict[str, dict[str, ScenarioResult]] = {}
    infos: list[ServerInfo] = []
    checks: list[Check] = []
    py_spy_note = ""
    for setup in setups:
        server, info, res = run_server(setup, art, args, budget)
        infos.append(info)
        results[setup.name] = res
        if server is None:
            continue
        try:
            if setup.name == DAGSERVE:
                checks = evaluate_targets(results, art)
                if not args.no_profile:
                    py_spy_note = profile_misses(server, checks, budget, args.out)
                else:
                    py_spy_note = "profiling disabled (--no-profile)"
        finally:
            server.stop()
    if not checks:
        checks = evaluate_targets(results, art)

    command = "python -m benchmarks.run" + (" " + shlex.join(argv if argv is not None
                                                               else sys.argv[1:])).rstrip()
    info = RunInfo(command=command.strip(),
                   date=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                   machine=machine,
                   client=(f"wrk, 1 thread ({machine['wrk']})" if client == "wrk"
                           else "benchmarks.loadgen (Python, asyncio streams, uvloop when "
                                "installed)"),
                   budget=(f"{budget.seconds:g} s measured after {budget.warmup_s:g} s warmup"
                           + (f", at most {budget.max_requests:,} requests"
                              if client == "python" else "")),
                   servers=infos, duration_s=time.perf_counter() - started, notes=notes)
    text = render_results(info, results, checks, args.scenario_keys, py_spy_note)
    kept = "".join(kept_section(args.results, start=start, end=end) for start, end in (
        (MEMORY_START, MEMORY_END), (PROTOCOLS_START, PROTOCOLS_END),
        (TRACING_START, TRACING_END), (PEERS_START, PEERS_END),
        (ANALYSIS_START, ANALYSIS_END)))  # other runs' sections
    args.results.write_text(text.rstrip("\n") + "\n\n" + kept if kept else text,
                            encoding="utf-8")
    raw = {"run": {"command": info.command, "date": info.date, "machine": machine,
                   "client": client, "seconds": budget.seconds, "warmup_s": budget.warmup_s},
           "servers": [vars(s) for s in infos],
           "results": {srv: {k: {"rows": [r.as_dict() for r in res.rows], "extra": res.extra,
                                 "skipped": res.skipped} for k, res in by_key.items()}
                       for srv, by_key in results.items()},
           "targets": [vars(c.target) for c in checks]}
    (args.out / "results.json").write_text(json.dumps(raw, indent=2, default=str),
                                           encoding="utf-8")
    side = [p for p in args.peers if p != "torchserve"]
    if side:
        run_side_by_side(side, args.out, budget, args.results, info.command, log, rounds=2)
    log(f"wrote {args.results} and {args.out / 'results.json'} "
        f"({time.perf_counter() - started:.0f} s)")
    for check in checks:
        t = check.target
        log(f"  {t.verdict:12s} {t.name}: {t.measured} ({t.detail})")
    return 0


def _dagserve_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("dagserve")
    except metadata.PackageNotFoundError:
        return "source tree"


def _torchserve_setup(install: TorchServeInstall) -> ServerSetup:
    cnn = {"with_inprocess": False, "torchvision_error": install.torchvision_error,
           "note": "TorchServe's built-in image_classifier ignores the archive's "
                   "model-config.yaml: it resizes to 256 and crops 224 x 224 (12x the pixels "
                   "dagserve feeds this 64 x 64 model), so its CNN rows do more work"}
    return ServerSetup(
        TORCHSERVE, install.version,
        lambda cfg, store, preload: torchserve_command(install.venv, cfg, store, preload),
        env=torchserve_env(install), scenario_kwargs={"b": cnn})


if __name__ == "__main__":
    sys.exit(main())
