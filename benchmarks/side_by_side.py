"""dagserve next to NVIDIA Triton and Ray Serve: the same scenarios, the same client (wrk when
installed, one thread), the same 1 KB body, one server at a time on this machine.

    python -m benchmarks.side_by_side --peer triton,rayserve [--seconds 3] [--results FILE]

Each server starts with one echo model and is measured in the same order:

1. echo at 32 connections (req/s) and at 1 connection (p50);
2. memory of the whole server (PSS and RSS summed over its process tree) with the echo model;
3. the echo model is removed and the 3-node chain added; memory again; the chain at 32
   connections (req/s) and at 1 connection; then the 1-node chain is added and run at 1
   connection: per hop = (p50 of chain 3 - p50 of chain 1) / 2.

dagserve is then also measured with chains of function nodes (``fchain1``, ``fchain3``: the
workflow's own functions, run in one worker process and one worker call per chain, see
benchmarks/fused_scenarios.py) and with the chains of echo models in a spec that says
``workflow: share-workers: true`` (``schain1``, ``schain3``: one worker process, one worker
call per chain): memory, 32 connections, per hop, as for the chains above.

The chains are dagserve workflows of echo nodes (batch size 1), Triton ensembles of
python-backend echo models, and Ray Serve deployments composed with DeploymentHandle
(``benchmarks/peer_drivers.py``). The Markdown section this prints is also written into
RESULTS.md between its own markers, which ``benchmarks.run`` keeps when it rewrites the file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from .artifacts import build_artifacts
from .loadgen import Target, run_load
from .memory import smaps
from .peer_drivers import BODY_1K, PEER_DRIVERS, Driver, make_drivers
from .procstats import process_cpu_seconds, process_tree, sample_tree
from .protocols import write_section
from .scenarios import Budget
from .servers import ServerError
from .wrk import run_wrk, wrk_available

__all__ = ["ANALYSIS_END", "ANALYSIS_START", "SECTION_END", "SECTION_START", "goals", "measure_server", "parse_peers", "render",
           "run_side_by_side"]

HERE = Path(__file__).resolve().parent
SECTION_START = "<!-- peers: written by python -m benchmarks.side_by_side -->"
SECTION_END = "<!-- peers: end -->"
# the analysis of a run's figures, written by hand under the section; kept by both writers
ANALYSIS_START = "<!-- peers analysis: written by hand, for the run above -->"
ANALYSIS_END = "<!-- peers analysis: end -->"


def parse_peers(text: str | None, allowed=("torchserve", *PEER_DRIVERS)) -> list[str]:
    """``triton,rayserve`` -> ["triton", "rayserve"]; ValueError naming an unknown one."""
    peers = [p.strip() for p in (text or "").split(",") if p.strip()]
    unknown = [p for p in peers if p not in allowed]
    if unknown:
        raise ValueError(f"unknown peer {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(peers))


def post(target: Target, timeout: float = 30.0) -> tuple[int, bytes]:
    headers = {"Content-Type": target.content_type or "application/octet-stream",
               **dict(target.headers)}
    req = urllib.request.Request(f"http://{target.host}:{target.port}{target.path}",
                                 data=target.body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_echoed(driver: Driver, app: str, timeout_s: float = 180.0) -> None:
    """Until ``app`` answers 200 with the 1 KB body in its answer."""
    deadline = time.perf_counter() + timeout_s
    last = "no answer"
    while time.perf_counter() < deadline:
        driver.server.check_alive()
        try:
            status, body = post(driver.request(app))
            if status == 200 and BODY_1K in body:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    raise ServerError(f"{driver.name}: {app} did not echo its input within {timeout_s:.0f} s "
                      f"({last})")


def _name(pid: int) -> str:
    """A process's name; for a Python process, what it runs (``-m`` module or script)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if not comm.startswith("python"):
        return comm
    if "-m" in argv[:-1]:
        return ".".join(argv[argv.index("-m") + 1].split(".")[-2:])
    scripts = [a for a in argv[1:] if a.endswith(".py")]
    return Path(scripts[0]).name if scripts else comm


def tree_memory(pid: int) -> dict:
    """RSS and PSS (MiB) summed over ``pid`` and its descendants, and PSS per process
    (``comm`` names: which part of a server holds the memory)."""
    mems = [(p, m) for p, m in ((p, smaps(p)) for p in process_tree(pid)) if m is not None]
    return {"processes": len(mems), "rss_mib": round(sum(m.rss for _, m in mems), 1),
            "pss_mib": round(sum(m.pss for _, m in mems), 1),
            "pss_by_process": [[_name(p), round(m.pss, 1)] for p, m in mems]}


def load(driver: Driver, app: str, connections: int, budget: Budget) -> dict:
    """One run; the server tree's CPU per answered request over it (warmup included in
    neither the count nor, approximately, the CPU: both are scaled to the measured part)."""
    target = driver.request(app)
    pid = driver.server.pid
    before, root_before = sample_tree(pid).cpu_s, process_cpu_seconds(pid)
    t0 = time.perf_counter()
    spec = budget.spec(connections)
    result = run_wrk(target, spec) if budget.client == "wrk" else run_load(target, spec)
    wall = time.perf_counter() - t0
    cpu = sample_tree(pid).cpu_s - before
    root = process_cpu_seconds(pid) - root_before
    ok = max(1, result.requests - result.errors)
    per_request = 1e6 * (result.elapsed_s / wall) / ok  # us per answered request per CPU s
    return {"rps": round(result.rps, 1), "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
            "requests": result.requests, "errors": result.errors,
            "server_cpu_pct": round(100 * cpu / wall, 1),
            "cpu_us_per_request": round(cpu * per_request, 1),
            "main_process_cpu_us_per_request": round(root * per_request, 1)}


def measure_chains(driver: Driver, budget: Budget, app: str, hop_key: str) -> dict:
    """``<app>3`` added: memory, 32 connections, 1 connection; then ``<app>1`` at 1
    connection; per hop = the difference of the two p50s / 2 (step 3 of the module doc)."""
    res: dict = {}
    driver.add(f"{app}3")
    wait_echoed(driver, f"{app}3")
    res[f"memory_{app}3"] = tree_memory(driver.server.pid)
    res[f"{app}3_c32"] = load(driver, f"{app}3", 32, budget)
    res[f"{app}3_c1"] = load(driver, f"{app}3", 1, budget)
    driver.add(f"{app}1")
    wait_echoed(driver, f"{app}1")
    res[f"{app}1_c1"] = load(driver, f"{app}1", 1, budget)
    res[hop_key] = round((res[f"{app}3_c1"]["p50_ms"] - res[f"{app}1_c1"]["p50_ms"]) / 2, 4)
    return res


def measure_server(driver: Driver, budget: Budget, log=print) -> dict:
    """The sequence of the module doc on a started server (the caller stops it)."""
    res: dict = {"server": driver.name, "version": driver.version,
                 "load_avg": ", ".join(f"{x:.2f}" for x in os.getloadavg())}
    wait_echoed(driver, "echo")
    res["first_echo_s"] = round(time.perf_counter() - driver.server.started_at, 2)
    res["echo_c32"] = load(driver, "echo", 32, budget)
    res["echo_c1"] = load(driver, "echo", 1, budget)
    res["memory_echo"] = tree_memory(driver.server.pid)
    driver.remove("echo")
    res.update(measure_chains(driver, budget, "chain", "per_hop_p50_ms"))
    if getattr(driver, "function_chains", False):
        before = "chain"
        for app, hop_key, _ in ONE_CALL_CHAINS:
            driver.remove(f"{before}3")
            driver.remove(f"{before}1")
            res.update(measure_chains(driver, budget, app, hop_key))
            before = app
    res["load_avg_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    log(f"  {driver.name}: echo {res['echo_c32']['rps']:.0f} req/s, chain3 "
        f"{res['chain3_c32']['rps']:.0f} req/s, per hop {res['per_hop_p50_ms']:.3f} ms, PSS "
        f"{res['memory_echo']['pss_mib']:.0f} MiB (echo), {res['memory_chain3']['pss_mib']:.0f}"
        f" MiB (chain); load {res['load_avg']}")
    return res


def run_one(driver: Driver, budget: Budget, log=print) -> dict:
    """Start, measure and always stop one server; a failure becomes ``{"error": why}``."""
    log(f"side by side: starting {driver.name}: {' '.join(driver.server.argv)}")
    try:
        driver.server.start()
        return measure_server(driver, budget, log)
    except (ServerError, OSError) as exc:
        log(f"  {driver.name} failed: {exc}")
        return {"server": driver.name, "version": driver.version,
                "error": str(exc).splitlines()[0]}
    finally:
        driver.server.stop()


# dagserve's chains that run in one worker call: app prefix, per-hop key, what the nodes are
ONE_CALL_CHAINS = (("fchain", "fper_hop_p50_ms", "function nodes"),
                   ("schain", "sper_hop_p50_ms", "models sharing a worker"))
RUNS = {"echo_c32": "rps", "echo_c1": "p50_ms", "chain3_c32": "rps", "chain3_c1": "p50_ms",
        "chain1_c1": "p50_ms",
        **{f"{app}{run}": figure for app, _, _ in ONE_CALL_CHAINS
           for run, figure in (("3_c32", "rps"), ("3_c1", "p50_ms"), ("1_c1", "p50_ms"))}}


def best_of(rounds: list[dict]) -> dict:
    """One server's rounds as one result: each run's best round (highest req/s at 32
    connections, lowest p50 at 1: the least disturbed by other work on a shared machine),
    the lowest per hop of a round (a difference of two p50s of the same round), the smallest
    memory; ``rounds`` keeps every round."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[-1]
    best = dict(ok[0])
    for key, figure in RUNS.items():
        pick = max if figure == "rps" else min
        if all(key in r for r in ok):  # the one-call chains: dagserve only
            best[key] = pick((r[key] for r in ok), key=lambda run: run[figure])
    for key in ("memory_echo", "memory_chain3",
                *(f"memory_{app}3" for app, _, _ in ONE_CALL_CHAINS)):
        if all(key in r for r in ok):
            best[key] = min((r[key] for r in ok), key=lambda m: m["pss_mib"])
    for key in ("per_hop_p50_ms", *(hop for _, hop, _ in ONE_CALL_CHAINS)):  # per round
        if all(key in r for r in ok):
            best[key] = min(r[key] for r in ok)
    best["first_echo_s"] = min(r["first_echo_s"] for r in ok)
    best["load_1min"] = "; ".join(f"{r['load_avg'].split(',')[0]} to "
                                  f"{r['load_avg_end'].split(',')[0]}" for r in ok)
    best["rounds"] = rounds
    return best


# ---- the report -----------------------------------------------------------------------------

ROWS = [
    ("echo, 32 connections: req/s", lambda r: r["echo_c32"]["rps"], "{:,.0f}"),
    ("echo, 1 connection: p50 ms", lambda r: r["echo_c1"]["p50_ms"], "{:.3f}"),
    ("3-node chain, 32 connections: req/s", lambda r: r["chain3_c32"]["rps"], "{:,.0f}"),
    ("3-node chain, 1 connection: p50 ms", lambda r: r["chain3_c1"]["p50_ms"], "{:.3f}"),
    ("1-node chain, 1 connection: p50 ms", lambda r: r["chain1_c1"]["p50_ms"], "{:.3f}"),
    ("per hop, p50 ms ((chain 3 - chain 1) / 2 of one round)", lambda r: r["per_hop_p50_ms"],
     "{:.3f}"),
    ("server CPU per request, echo at 32 (us)", lambda r: r["echo_c32"]["cpu_us_per_request"],
     "{:.0f}"),
    ("... of which the process started: frontend, tritonserver, Ray driver (us)",
     lambda r: r["echo_c32"]["main_process_cpu_us_per_request"], "{:.0f}"),
    ("server CPU per request, chain at 32 (us)",
     lambda r: r["chain3_c32"]["cpu_us_per_request"], "{:.0f}"),
    ("... of which the process started: frontend, tritonserver, Ray driver (us)",
     lambda r: r["chain3_c32"]["main_process_cpu_us_per_request"], "{:.0f}"),
    ("server CPU, echo at 32 (% of one core)", lambda r: r["echo_c32"]["server_cpu_pct"],
     "{:.0f}"),
    ("whole server with the echo model: PSS MiB", lambda r: r["memory_echo"]["pss_mib"],
     "{:.0f}"),
    ("... RSS MiB (processes)", lambda r: (r["memory_echo"]["rss_mib"],
                                           r["memory_echo"]["processes"]), "{0:.0f} ({1})"),
    ("whole server with the 3-node chain: PSS MiB", lambda r: r["memory_chain3"]["pss_mib"],
     "{:.0f}"),
    ("... RSS MiB (processes)", lambda r: (r["memory_chain3"]["rss_mib"],
                                           r["memory_chain3"]["processes"]), "{0:.0f} ({1})"),
    *(row for app, hop, what in ONE_CALL_CHAINS for row in (
        (f"3-node chain of {what}, 32 connections: req/s (dagserve)",
         lambda r, app=app: r[f"{app}3_c32"]["rps"], "{:,.0f}"),
        (f"per hop between {what}, p50 ms (dagserve)", lambda r, hop=hop: r[hop], "{:.3f}"),
        (f"whole server with the 3-node chain of {what}: PSS MiB (dagserve)",
         lambda r, app=app: r[f"memory_{app}3"]["pss_mib"], "{:.0f}"))),
    ("errors (all runs)", lambda r: sum(r[k]["errors"] for k in RUNS if k in r), "{}"),
    ("process start to first echo answer, s", lambda r: r["first_echo_s"], "{:.2f}"),
    ("load average (1 min) from start to end, per round", lambda r: r["load_1min"], "{}"),
]


def _cell(fmt: str, get, result: dict) -> str:
    try:
        value = get(result)
    except KeyError:  # a figure only dagserve has
        return "—"
    return fmt.format(*value) if isinstance(value, tuple) else fmt.format(value)


def goals(ours: dict, triton: dict) -> list[dict]:
    """The issue's four goals against Triton: name, dagserve, Triton, ratio, bound, met."""
    def goal(name, a, b, bound, higher_is_better, unit):
        ratio = a / b if b else float("inf")
        met = ratio >= bound if higher_is_better else ratio <= bound
        return {"goal": name, "dagserve": a, "triton": b, "ratio": ratio, "unit": unit,
                "bound": (">= " if higher_is_better else "<= ") + f"{bound:g}x", "met": met}
    one_call_chains = [g for app, hop, what in ONE_CALL_CHAINS if f"{app}3_c32" in ours
                       for g in (
        goal(f"3-node chain of {what} (32 conn.) >= 1.5x Triton's ensemble",
             ours[f"{app}3_c32"]["rps"], triton["chain3_c32"]["rps"], 1.5, True, "req/s"),
        goal(f"per hop between {what} (p50) <= Triton's", ours[hop],
             triton["per_hop_p50_ms"], 1.0, False, "ms"))]
    return [
        goal("single model (echo, 32 conn.) >= Triton's req/s", ours["echo_c32"]["rps"],
             triton["echo_c32"]["rps"], 1.0, True, "req/s"),
        goal("3-node chain (32 conn.) >= 1.5x Triton's ensemble", ours["chain3_c32"]["rps"],
             triton["chain3_c32"]["rps"], 1.5, True, "req/s"),
        goal("per hop (p50) <= Triton's", ours["per_hop_p50_ms"], triton["per_hop_p50_ms"],
             1.0, False, "ms"),
        goal("echo model's whole server within 2x Triton's PSS", ours["memory_echo"]["pss_mib"],
             triton["memory_echo"]["pss_mib"], 2.0, False, "MiB"),
    ] + one_call_chains


def _by_process(memory: dict) -> str:
    """``name x count: PSS`` per process name, largest first."""
    sums: dict[str, list[float]] = {}
    for name, pss in memory["pss_by_process"]:
        sums.setdefault(name, []).append(pss)
    return ", ".join(f"{name}{f' x {len(v)}' if len(v) > 1 else ''} {sum(v):.0f}"
                     for name, v in sorted(sums.items(), key=lambda kv: -sum(kv[1])))


def render(results: list[dict], missing: dict[str, str], command: str, client: str,
           budget: Budget) -> str:
    ok = [r for r in results if "error" not in r]
    rounds = max((len(r.get("rounds", [r])) for r in results), default=1)
    lines = ["## Side by side with Triton and Ray Serve", "",
             f"`{command}` on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; client: "
             f"{client}; {budget.seconds:g} s per run after {budget.warmup_s:g} s warmup, "
             f"each server {rounds} time(s), alternating, each figure its best round; "
             f"request body: 1024 bytes (Triton: the same bytes as one binary UINT8 tensor "
             f"of v2 REST infer, plus its JSON header). One server at a time on "
             f"{os.cpu_count()} cores shared with other work: the load average is in the table.",
             ""]
    if ok:
        lines += ["| | " + " | ".join(f"{r['server']} ({r['version']})" for r in ok) + " |",
                  "|---|" + "---:|" * len(ok)]
        for label, get, fmt in ROWS:
            lines.append(f"| {label} | " + " | ".join(_cell(fmt, get, r) for r in ok) + " |")
        lines += ["", "PSS (MiB) by process name:", ""]
        for r in ok:
            lines.append(f"- {r['server']}: echo server: {_by_process(r['memory_echo'])}; "
                         f"with the chain: {_by_process(r['memory_chain3'])}")
        lines.append("")
    for r in results:
        if "error" in r:
            lines.append(f"- {r['server']} did not complete: {r['error']}")
    for peer, why in missing.items():
        lines.append(f"- {peer} was not run: {why.splitlines()[0]}")
    by_name = {r["server"]: r for r in ok}
    if "dagserve" in by_name and "Triton" in by_name:
        lines += ["", "Goals against Triton (issue 16):", "",
                  "| goal | dagserve | Triton | dagserve / Triton | bound | verdict |",
                  "|---|---:|---:|---:|---|---|"]
        for g in goals(by_name["dagserve"], by_name["Triton"]):
            fmt = {"req/s": "{:,.0f}", "ms": "{:.3f}", "MiB": "{:.0f}"}[g["unit"]]
            lines.append(f"| {g['goal']} | {fmt.format(g['dagserve'])} {g['unit']} | "
                         f"{fmt.format(g['triton'])} {g['unit']} | {g['ratio']:.2f}x | "
                         f"{g['bound']} | "
                         f"{'met' if g['met'] else 'MISSED'} |")
    if "dagserve" in by_name and "Ray Serve" in by_name:
        d, r = by_name["dagserve"], by_name["Ray Serve"]
        lines += ["", f"Against Ray Serve: echo {d['echo_c32']['rps'] / r['echo_c32']['rps']:.1f}x"
                  f" its req/s, chain {d['chain3_c32']['rps'] / r['chain3_c32']['rps']:.1f}x, "
                  f"per hop {d['per_hop_p50_ms']:.3f} vs {r['per_hop_p50_ms']:.3f} ms, echo "
                  f"server PSS {d['memory_echo']['pss_mib'] / r['memory_echo']['pss_mib']:.2f}x "
                  f"its PSS."]
    return "\n".join(lines) + "\n"


def run_side_by_side(peers: list[str], out: Path, budget: Budget, results_file: Path | None,
                     command: str, log=print, rounds: int = 1) -> str:
    """Build the archives, run every server in turn (``rounds`` times, alternating), write
    the section; returns it."""
    art = build_artifacts(out.resolve())
    by_server: dict[str, list[dict]] = {}
    for _ in range(rounds):
        drivers, missing = make_drivers(peers, art, out / "side_by_side", log)
        for driver in drivers:
            by_server.setdefault(driver.name, []).append(run_one(driver, budget, log))
    results = [best_of(r) for r in by_server.values()]
    (out / "side_by_side.json").write_text(json.dumps(
        {"results": results, "missing": missing}, indent=2), encoding="utf-8")
    client = "wrk, 1 thread" if budget.client == "wrk" else "benchmarks.loadgen (Python)"
    section = render(results, missing, command, client, budget)
    if results_file is not None:
        write_section(results_file, section, start=SECTION_START, end=SECTION_END)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.side_by_side",
                                     description="dagserve next to Triton and Ray Serve.")
    parser.add_argument("--peer", default="triton,rayserve",
                        help="comma list of triton, rayserve (default: both)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of every server, alternating; the best of each is kept")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md",
                        help="RESULTS.md to write the section into ('-': print only)")
    args = parser.parse_args(argv)
    try:
        peers = parse_peers(args.peer, tuple(PEER_DRIVERS))
    except ValueError as exc:
        parser.error(str(exc))
    client = "wrk" if wrk_available() else "python"
    budget = Budget(args.seconds, args.warmup, 200_000, client)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.side_by_side " + " ".join(argv if argv is not None
                                                               else __import__("sys").argv[1:])
    print(run_side_by_side(peers, args.out, budget,
                           None if str(args.results) == "-" else args.results, command.strip(),
                           rounds=max(1, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
