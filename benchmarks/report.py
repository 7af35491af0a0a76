"""Judge the issue's targets from the scenario results and write RESULTS.md."""

from __future__ import annotations

from dataclasses import dataclass, field

from .artifacts import BenchArtifacts
from .profile import Profile
from .results import Table, Target, fmt_ratio, format_section, format_table, format_targets
from .scenarios import (CHAIN_CONNECTIONS, CNN_CONNECTIONS, SCENARIOS, Deployment, Row,
                        ScenarioResult, cnn_deployment, echo_deployment)

__all__ = ["Check", "DAGSERVE", "RunInfo", "ServerInfo", "TORCHSERVE", "evaluate_targets",
           "render_results"]

DAGSERVE = "dagserve"
TORCHSERVE = "TorchServe"
WORKER_NOISE = 0.95  # two workers count as "not slower" down to 95 % of one (run-to-run noise)

Results = dict[str, dict[str, ScenarioResult]]  # server -> scenario key -> result


@dataclass
class ServerInfo:
    name: str
    version: str
    first_inference_s: float | None
    idle_rss_bytes: int
    error: str | None = None
    load_avg: str = ""


@dataclass
class Check:
    """A target's verdict, plus the load to profile when it is missed."""

    target: Target
    probe: tuple[Deployment, int] | None = None
    profile: Profile | None = None
    profile_error: str | None = None


def _short(text: str | None, limit: int = 240) -> str:
    """A reason cut to fit a table cell (results.json keeps the whole text)."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _pct_vs_goal(value: float, goal: float, higher_is_better: bool) -> str:
    if goal == 0:
        return ""
    diff = (value - goal) / goal * 100
    if higher_is_better:
        return f"{diff:+.0f} % vs goal" if diff >= 0 else f"{-diff:.0f} % short of goal"
    return f"{-diff:.0f} % under goal" if diff <= 0 else f"{diff:.0f} % over goal"


def _best(rows: list[Row]) -> Row | None:
    return max(rows, key=lambda r: r.load.ok_rps, default=None)


def _echo_target(results: Results, art: BenchArtifacts) -> Check:
    goal = "≥ 4× TorchServe req/s (best echo config each, same client)"
    ours = results.get(DAGSERVE, {}).get("a")
    theirs = results.get(TORCHSERVE, {}).get("a")
    probe = (echo_deployment(art, 1, 1), 32)
    if ours is None or not ours.rows:
        return Check(Target("echo throughput", goal, "n/a", None, "scenario (a) not run"))
    best = _best(ours.rows)
    if theirs is None or not theirs.rows:
        why = "run with --peer torchserve" if theirs is None else (theirs.skipped or "no rows")
        return Check(Target("echo throughput", goal, f"dagserve {best.load.ok_rps:,.0f} req/s "
                            f"({best.config})", None, _short(f"no TorchServe figure: {why}")))
    peer = _best(theirs.rows)
    ratio = best.load.ok_rps / peer.load.ok_rps if peer.load.ok_rps else 0.0
    met = ratio >= 4.0
    measured = f"{best.load.ok_rps:,.0f} vs {peer.load.ok_rps:,.0f} req/s = {ratio:.2f}×"
    best1 = _best([r for r in ours.rows if r.params["batch"] == 1])
    peer1 = _best([r for r in theirs.rows if r.params["batch"] == 1])
    if best1 and peer1 and peer1.load.ok_rps:
        measured += (f" (batch 1 only: {best1.load.ok_rps:,.0f} vs {peer1.load.ok_rps:,.0f} = "
                     f"{best1.load.ok_rps / peer1.load.ok_rps:.2f}×)")
    return Check(Target("echo throughput", goal, measured, met, _pct_vs_goal(ratio, 4.0, True)),
                 None if met else probe)


HOP_P50_MS, HOP_P99_MS = 0.1, 0.5  # issue 16: chain of 5 vs chain of 1, one connection


def _hop_target(results: Results, key: str = "c", label: str = "per-hop cost",
                probe_war: str = "chain5") -> Check:
    goal = f"≤ {HOP_P50_MS:g} ms p50 and ≤ {HOP_P99_MS:g} ms p99 per hop"
    ours = results.get(DAGSERVE, {}).get(key)
    probe = (Deployment("workflow", probe_war, f"{probe_war}.war"), 1)
    if ours is None or ours.skipped or "per_hop_k5" not in ours.extra:
        why = f"scenario ({key}) not run" if ours is None else (ours.skipped or "no figures")
        return Check(Target(label, goal, "n/a", None, _short(why)))
    hop = ours.extra["per_hop_k5"]
    met = hop["p50_ms"] <= HOP_P50_MS and hop["p99_ms"] <= HOP_P99_MS
    return Check(Target(label, goal,
                        f"{hop['p50_ms']:.3f} ms p50, {hop['p99_ms']:.3f} ms p99 (chain 5 vs 1)",
                        met, _pct_vs_goal(hop["p50_ms"], HOP_P50_MS, False)),
                 None if met else probe)


def _chain_target(results: Results, probe_dep: Deployment, key: str = "d",
                  label: str = "chain throughput") -> Check:
    goal = "chain of 3 ≥ 90 % of its slowest node's req/s"
    ours = results.get(DAGSERVE, {}).get(key)
    probe = (probe_dep, CHAIN_CONNECTIONS)
    if ours is None or ours.skipped:
        why = f"scenario ({key}) not run" if ours is None else ours.skipped
        return Check(Target(label, goal, "n/a", None, _short(why)))
    ratio, text = chain_share(ours)
    met = ratio >= 0.9
    return Check(Target(label, goal, text, met, _pct_vs_goal(ratio, 0.9, True)),
                 None if met else probe)


def chain_share(res: ScenarioResult) -> tuple[float, str]:
    """The chain's req/s as a share of its node's: the mean over the alternating pairs
    (scenarios.chain_against_node), and how it reads."""
    ratios = res.extra.get("chain_node_ratios")
    chain, node = res.row(what="chain"), res.row(what="node")
    if not ratios:  # results written before the runs were paired
        ratios = [chain.load.ok_rps / node.load.ok_rps if node and node.load.ok_rps else 0.0]
    mean = sum(ratios) / len(ratios)
    text = f"{chain.load.ok_rps:,.0f} vs {node.load.ok_rps:,.0f} req/s"
    if len(ratios) == 1:
        return mean, f"{text} = {100 * mean:.0f} %"
    return mean, (f"{100 * mean:.0f} %, the mean of {len(ratios)} alternating pairs "
                  f"({', '.join(f'{100 * r:.0f}' for r in ratios)} %; the first: {text})")


def _cnn_target(results: Results, art: BenchArtifacts) -> Check:
    goal = "batch 8 ≥ 90 % of in-process batched torch (items/s)"
    ours = results.get(DAGSERVE, {}).get("b")
    if ours is None or ours.skipped or "inprocess_b8" not in ours.extra:
        why = "scenario (b) not run" if ours is None else (ours.skipped or "no in-process figure")
        return Check(Target("CNN batched", goal, "n/a", None, _short(why)))
    best = _best([r for r in ours.rows if r.params["batch"] == 8])
    base = ours.extra["inprocess_b8"]["items_per_s"]
    ratio = best.load.ok_rps / base if base else 0.0
    met = ratio >= 0.9
    probe = None if met else (cnn_deployment(art, 8, best.params["workers"]),
                              CNN_CONNECTIONS)
    return Check(Target("CNN batched", goal,
                        f"{best.load.ok_rps:,.0f} ({best.config}) vs {base:,.0f} in-process = "
                        f"{100 * ratio:.0f} %", met, _pct_vs_goal(ratio, 0.9, True)), probe)


def _workers_target(results: Results, art: BenchArtifacts) -> Check:
    goal = f"2 CPU workers never slower than 1 (≥ {100 * WORKER_NOISE:.0f} %: noise band)"
    pairs: list[tuple[float, Row, Row]] = []
    for key in ("a", "b"):
        res = results.get(DAGSERVE, {}).get(key)
        if res is None or res.skipped:
            continue
        for one in (r for r in res.rows if r.params["workers"] == 1):
            two = res.row(batch=one.params["batch"], workers=2, c=one.params["c"])
            if two is not None and one.load.ok_rps:
                pairs.append((two.load.ok_rps / one.load.ok_rps, one, two))
    if not pairs:
        return Check(Target("2 workers vs 1", goal, "n/a", None, "scenarios (a)/(b) not run"))
    worst, one, two = min(pairs, key=lambda p: p[0])
    met = worst >= WORKER_NOISE
    where = f"{one.scenario}: c={one.params['c']} batch={one.params['batch']}"
    probe = None
    if not met:
        dep = (echo_deployment(art, one.params["batch"], 2) if one.scenario == "a"
               else cnn_deployment(art, one.params["batch"], 2))
        probe = (dep, one.params["c"])
    below = sum(1 for ratio, _, _ in pairs if ratio < WORKER_NOISE)
    return Check(Target("2 workers vs 1", goal,
                        f"{below} of {len(pairs)} pairs below; worst {100 * worst:.0f} % ({where}: "
                        f"{two.load.ok_rps:,.0f} vs {one.load.ok_rps:,.0f} req/s)",
                        met, _pct_vs_goal(worst, WORKER_NOISE, True)), probe)


def _diamond_check(results: Results) -> Check:
    goal = "diamond p50 nearer max(branches) than their sum"
    ours = results.get(DAGSERVE, {}).get("e")
    if ours is None or ours.skipped or not ours.rows:
        why = "scenario (e) not run" if ours is None else ours.skipped
        return Check(Target("parallel branches", goal, "n/a", None, _short(why)))
    p50 = ours.rows[0].load.p50_ms
    par, ser = ours.extra["parallel_ms"], ours.extra["serial_ms"]
    met = p50 < (par + ser) / 2
    return Check(Target("parallel branches", goal,
                        f"p50 {p50:.1f} ms (parallel {par} ms, serial {ser} ms)", met,
                        f"{p50 - par:+.1f} ms over the slowest branch"))


def evaluate_targets(results: Results, art: BenchArtifacts) -> list[Check]:
    models = Deployment("workflow", "chain3_batched", art.chain_batched, batch_size=8)
    functions = Deployment("workflow", "fchain3_b8", "fchain3_b8.war", batch_size=8)
    shared = Deployment("workflow", "schain3_b8", "schain3_b8.war", batch_size=8)
    return [_echo_target(results, art), _hop_target(results), _chain_target(results, models),
            _hop_target(results, "h", "per-hop cost, function nodes", "fchain5"),
            _chain_target(results, functions, "h", "chain throughput, function nodes"),
            _hop_target(results, "i", "per-hop cost, models sharing a worker", "schain5"),
            _chain_target(results, shared, "i", "chain throughput, models sharing a worker"),
            _cnn_target(results, art), _workers_target(results, art), _diamond_check(results)]


# ---- rendering ------------------------------------------------------------------------------

ROW_COLUMNS = ["config", "server", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors",
               "server RSS MiB", "first inference s", "server CPU %", "client CPU %"]


def _row_cells(row: Row) -> list:
    load = row.load
    errors = f"{load.errors:,}" if not load.errors else (
        f"{load.errors:,} ({', '.join(f'{k}: {v}' for k, v in load.error_kinds.items())})")
    return [row.config, row.server, load.rps, load.p50_ms, load.p90_ms, load.p99_ms, errors,
            row.rss_bytes / 2**20,
            "" if row.first_inference_s is None else row.first_inference_s, row.server_cpu_pct,
            load.client_cpu_pct]


def _scenario_section(key: str, by_server: dict[str, ScenarioResult]) -> str:
    title = SCENARIOS[key][0]
    table = Table(title=title, columns=ROW_COLUMNS)
    notes: list[str] = []
    for server, res in by_server.items():
        if res.skipped:
            notes.append(f"{server}: n/a — {_short(res.skipped, 700)}")
        for row in res.rows:
            table.add_row(_row_cells(row))
        notes += [f"{server}: {n}" for n in res.notes]
    for server, res in by_server.items():
        if not res.skipped:
            notes += [f"{server}: {n}" for n in _scenario_extras(key, res)]
    table.notes = notes
    parts = [format_section(table)]
    if len(by_server) > 1:
        parts.append(_side_by_side(key, by_server))
    return "\n".join(p for p in parts if p)


def _scenario_extras(key: str, res: ScenarioResult) -> list[str]:
    out: list[str] = []
    if key == "b":
        for batch in (1, 8):
            base = res.extra.get(f"inprocess_b{batch}")
            if base is None:
                continue
            served = _best([r for r in res.rows if r.params["batch"] == batch])
            variants = "; ".join(
                f"{v['copies']} process(es) x {v['threads']} thread(s): "
                f"{v['items_per_s']:,.0f} items/s (forward alone "
                f"{v['forward_items_per_s']:,.0f})" for v in base.get("variants", [base]))
            out.append(
                f"in-process handler, batch {batch}: {variants}; best served batch {batch}: "
                f"{served.load.ok_rps:,.0f} req/s = "
                f"{100 * served.load.ok_rps / base['items_per_s']:.0f} % of in-process")
    elif key in ("c", "h", "i"):
        for k in (3, 5):
            hop = res.extra.get(f"per_hop_k{k}")
            if hop:
                out.append(f"per hop from chain {k} vs chain 1: {hop['p50_ms']:.3f} ms p50, "
                           f"{hop['p99_ms']:.3f} ms p99")
    if key in ("d", "h", "i"):
        if res.row(what="chain") and res.row(what="node"):
            out.append(f"chain / node: {chain_share(res)[1]}")
    elif key == "e" and res.rows:
        out.append(f"p50 {res.rows[0].load.p50_ms:.1f} ms; branches in parallel would take "
                   f"{res.extra['parallel_ms']} ms, in series {res.extra['serial_ms']} ms")
    elif key == "f" and "when_us_per_node_p50" in res.extra:
        out.append(f"when: {res.extra['when_us_per_node_p50']:+.1f} us per node at p50 "
                   f"(goal <= 10 us); a skipped branch: "
                   f"{res.extra['skipped_branch_us_p50']:+.1f} us at p50")
    elif key == "g" and res.extra.get("batch_sizes"):
        out.append(f"batch sizes the node saw (size: batches): {res.extra['batch_sizes']}; "
                   f"mean {res.extra['mean_batch']:.2f}; p50 {res.rows[0].load.p50_ms:.3f} ms "
                   f"(goal <= 3 ms)")
    return out


def _side_by_side(key: str, by_server: dict[str, ScenarioResult]) -> str:
    ours, theirs = by_server.get(DAGSERVE), by_server.get(TORCHSERVE)
    table = Table(title=f"{SCENARIOS[key][0]}: dagserve / TorchServe",
                  columns=["config", "dagserve req/s", "TorchServe req/s", "ratio",
                           "dagserve p50 ms", "TorchServe p50 ms"])
    if ours is None or theirs is None or theirs.skipped or ours.skipped:
        return ""
    for row in ours.rows:
        peer = next((r for r in theirs.rows if r.params == row.params), None)
        table.add_row([row.config, row.load.ok_rps, peer.load.ok_rps if peer else None,
                       fmt_ratio(row.load.ok_rps, peer.load.ok_rps if peer else None),
                       row.load.p50_ms, peer.load.p50_ms if peer else None])
    return format_section(table, level=4)


def _profile_section(checks: list[Check], py_spy_note: str) -> str:
    missed = [c for c in checks if c.target.met is False]
    lines = ["## Where the time goes (profiles of missed targets)", ""]
    if not missed:
        return "\n".join(lines + ["No target was missed: nothing to profile.", ""])
    for check in missed:
        lines.append(f"### {check.target.name}")
        lines.append("")
        if check.probe is None:
            lines += ["(no load to profile for this target)", ""]
            continue
        dep, conns = check.probe
        lines.append(f"Load: `POST {dep.path}` at {conns} connection(s), sampled with "
                     f"`py-spy record --subprocesses --nonblocking` over the server's "
                     f"process tree. A frame blocked in a socket read or in the event "
                     f"loop's poll may be waiting rather than computing: py-spy cannot "
                     f"always tell the two apart.")
        lines.append("")
        if check.profile is None:
            lines += [f"No profile: {check.profile_error or py_spy_note}", ""]
            continue
        prof = check.profile
        shares = ", ".join(f"{p}: {s:.0f} %" for p, s in prof.process_shares()[:6])
        lines += [f"{prof.samples:,} samples on CPU; by process: {shares}", ""]
        table = Table(title="top", columns=["frame (self time)", "% of samples"])
        for frame, pct in prof.top_self(12):
            table.add_row([f"`{frame}`", pct])
        lines += [format_table(table), ""]
        table = Table(title="top", columns=["source file (self time)", "% of samples"])
        for path, pct in prof.top_files(10):
            table.add_row([f"`{path}`", pct])
        lines += [format_table(table), ""]
    return "\n".join(lines)


@dataclass
class RunInfo:
    command: str
    date: str
    machine: dict[str, str]
    client: str
    budget: str
    servers: list[ServerInfo] = field(default_factory=list)
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def render_results(info: RunInfo, results: Results, checks: list[Check],
                   scenario_keys: list[str], py_spy_note: str) -> str:
    parts = ["# dagserve benchmark results", "",
             "Generated by the benchmark suite (`benchmarks/`, see `benchmarks/README.md`); "
             "rerun it to refresh this file.", "",
             f"- Command: `{info.command}`", f"- Date: {info.date}",
             f"- Load client: {info.client}", f"- Each run: {info.budget}",
             f"- Whole run took {info.duration_s:.0f} s", ""]
    parts += ["## Machine", ""] + [f"- {k}: {v}" for k, v in info.machine.items()] + [""]
    parts += [n if n.startswith("- ") else f"- {n}" for n in info.notes]
    if info.notes:
        parts.append("")
    parts += ["## Targets", "", format_targets([c.target for c in checks]), ""]
    servers = Table(title="Servers", columns=["server", "version", "start to first inference s",
                                              "RSS after start MiB", "load average at start",
                                              "note"])
    for s in info.servers:
        servers.add_row([s.name, s.version, s.first_inference_s, s.idle_rss_bytes / 2**20,
                         s.load_avg, s.error or ""])
    parts += ["## Servers", "", format_table(servers), "",
              "Start to first inference: from spawning the server process (one echo model "
              "preloaded, one worker) to the first 200 of `POST /predictions/echo`.", ""]
    parts.append("## Scenarios\n")
    for key in scenario_keys:
        by_server = {srv: res[key] for srv, res in results.items() if key in res}
        parts.append(_scenario_section(key, by_server))
    parts.append(_profile_section(checks, py_spy_note))
    parts += ["## How to read the tables", "",
              "- req/s counts every completed request in the measured window (after a warmup); "
              "errors are non-2xx answers and lost connections.",
              "- p50/p90/p99: per-request latency percentiles as the client saw them.",
              "- server RSS: VmRSS summed over the server process and all its descendants "
              "(frontend + workers; for TorchServe the JVM + Python workers), after the run.",
              "- first inference: from the registration request to the first 200 (rows where "
              "the model or workflow was registered).",
              "- server CPU %: CPU time of the server's process tree over the run, in % of one "
              "core (this machine has "
              f"{info.machine.get('cores', '?')}); client CPU %: the load client's, likewise. "
              "A client near 100 % was the bottleneck, not the server.",
              ""]
    return "\n".join(parts)

