"""The five scenarios of the benchmark issue, run against one started server.

(a) echo model: connections 1/8/32 x batch 1/8 x workers 1/2 -- the serving overhead;
(b) the example CNN, batch 1 and 8, workers 1 and 2, next to its handler called in-process
    with batched torch (``benchmarks.inprocess``) -- the limit;
(c) per-hop cost: chains of 1, 3, 5 echo nodes at one connection;
    ms per hop = (chain_k - chain_1) / (k - 1);
(d) chain throughput: 3 echo nodes, batching on, 32 connections, against its slowest node
    (the echo model with the same settings) standalone;
(e) the diamond: echo -> sleep A and sleep B in parallel -> echo; latency ~ max(A, B).

Every model or workflow is registered through the management API just before its runs and
unregistered after, so each row's RSS is that configuration's alone (plus the preloaded
echo model every server starts with).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .artifacts import BenchArtifacts, sample_image
from .loadgen import LoadSpec, Target, run_load
from .servers import ServerError, ServerProcess
from .stats import LoadResult
from .wrk import run_wrk

__all__ = ["Budget", "Deployment", "Row", "ScenarioResult", "SCENARIOS", "ECHO_BODY",
           "deployed", "measure", "run_scenario"]

ECHO_BODY = b'{"text": "dagserve benchmark payload", "n": 42}'
OCTET = "application/octet-stream"
PNG = "image/png"
REPO = Path(__file__).resolve().parent.parent


class Unsupported(ServerError):
    """The server refused something the scenario needs (e.g. TorchServe 0.12.0 workflows)."""


@dataclass(frozen=True)
class Budget:
    """How long each load runs and with which client."""

    seconds: float
    warmup_s: float
    max_requests: int
    client: str  # "wrk" or "python"

    def spec(self, connections: int) -> LoadSpec:
        return LoadSpec(connections=connections, duration_s=self.seconds,
                        max_requests=self.max_requests, warmup_s=self.warmup_s)


@dataclass(frozen=True)
class Deployment:
    """A model or workflow registered for some runs, and how to call it."""

    kind: str  # "model" or "workflow"
    name: str
    url: str
    batch_size: int = 1
    max_batch_delay_ms: int = 5
    workers: int = 1
    body: bytes = ECHO_BODY
    content_type: str = OCTET

    @property
    def path(self) -> str:
        return f"/predictions/{self.name}" if self.kind == "model" else f"/wfpredict/{self.name}"


@dataclass
class Row:
    """One load run's figures for one server."""

    scenario: str
    server: str
    config: str
    params: dict
    load: LoadResult
    rss_bytes: int
    server_cpu_pct: float
    first_inference_s: float | None

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "server": self.server, "config": self.config,
                "params": self.params, "load": self.load.as_dict(),
                "rss_mib": round(self.rss_bytes / 2**20, 1),
                "server_cpu_pct": round(self.server_cpu_pct, 1),
                "first_inference_s": (None if self.first_inference_s is None
                                      else round(self.first_inference_s, 3))}


@dataclass
class ScenarioResult:
    """One scenario on one server: its rows, extra figures, or why it could not run."""

    key: str
    server: str
    rows: list[Row] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    def row(self, **params) -> Row | None:
        for r in self.rows:
            if all(r.params.get(k) == v for k, v in params.items()):
                return r
        return None


@contextmanager
def deployed(server: ServerProcess, dep: Deployment) -> Iterator[float]:
    """Register ``dep``, wait for its first 200, yield the seconds that took; unregister."""
    t0 = time.perf_counter()
    if dep.kind == "model":
        server.register_model(dep.name, dep.url, batch_size=dep.batch_size,
                              max_batch_delay_ms=dep.max_batch_delay_ms, workers=dep.workers)
    else:
        reply = server.register_workflow(dep.url, dep.name)
        if reply.status != 200:
            raise Unsupported(f"{server.name} refused the workflow {dep.url}: HTTP "
                              f"{reply.status} {reply.message()[:300]}")
    try:
        yield server.wait_first_inference(dep.path, dep.body, since=t0,
                                          content_type=dep.content_type, timeout_s=300)
    finally:
        try:
            if dep.kind == "model":
                server.unregister_model(dep.name)
            else:
                server.unregister_workflow(dep.name)
        except (ServerError, OSError) as exc:
            print(f"  warning: {exc}", file=sys.stderr)


def measure(server: ServerProcess, dep: Deployment, connections: int,
            budget: Budget) -> tuple[LoadResult, int, float]:
    """One load run: ``(result, server RSS after it, server CPU % over it)``."""
    target = Target("127.0.0.1", server.ports.inference, dep.path, body=dep.body,
                    content_type=dep.content_type)
    spec = budget.spec(connections)
    before = server.sample()
    t0 = time.perf_counter()
    load = run_wrk(target, spec) if budget.client == "wrk" else run_load(target, spec)
    wall = time.perf_counter() - t0
    after = server.sample()
    return load, after.rss_bytes, 100.0 * (after.cpu_s - before.cpu_s) / wall


STALL_BUSY = 0.8  # below this busy fraction a row is flagged as stalling


def busy_fraction(load: LoadResult) -> float:
    """Little's law: the share of the connections' time that the completed requests
    explain. Near 1 for a healthy closed-loop run; far below 1 when requests hung past the
    end of the run (they are in no percentile, and wrk does not count them at all)."""
    if load.elapsed_s <= 0 or load.connections <= 0:
        return 0.0
    return load.rps * load.mean_ms / 1000.0 / load.connections


def _run_row(result: ScenarioResult, server: ServerProcess, dep: Deployment, connections: int,
             budget: Budget, config: str, params: dict, first: float | None,
             log: Callable[[str], None]) -> Row:
    load, rss, cpu = measure(server, dep, connections, budget)
    row = Row(result.key, server.name, config, dict(params, c=connections), load, rss, cpu,
              first)
    result.rows.append(row)
    if load.requests == load.errors:
        result.notes.append(f"{config}: no successful answer in the {budget.seconds:g} s run "
                            f"({load.requests} requests, {load.errors} errors)")
    elif busy_fraction(load) < STALL_BUSY:
        result.notes.append(
            f"{config}: stalls: the completed requests account for only "
            f"{100 * busy_fraction(load):.0f} % of the connections' time (req/s x mean "
            f"latency / connections); the rest went to requests still unanswered when the "
            f"run ended, which no latency column shows")
    log(f"  {server.name:10s} {result.key} {config:28s} {load.rps:9.0f} req/s  "
        f"p50 {load.p50_ms:7.3f} ms  p99 {load.p99_ms:7.3f} ms  errors {load.errors}  "
        f"server CPU {cpu:4.0f} %  client CPU {load.client_cpu_pct:4.0f} %")
    return row


# ---- (a) echo -------------------------------------------------------------------------------

def echo_deployment(art: BenchArtifacts, batch: int, workers: int) -> Deployment:
    return Deployment("model", f"echo_b{batch}_w{workers}", art.echo_mar, batch_size=batch,
                      workers=workers)


def scenario_echo(server: ServerProcess, art: BenchArtifacts, budget: Budget,
                  log: Callable[[str], None], quick: bool) -> ScenarioResult:
    result = ScenarioResult("a", server.name)
    for batch in (1, 8):
        for workers in (1, 2):
            dep = echo_deployment(art, batch, workers)
            with deployed(server, dep) as first:
                for c in (1, 8, 32):
                    _run_row(result, server, dep, c, budget, f"c={c} batch={batch} workers={workers}",
                             {"batch": batch, "workers": workers}, first, log)
                    first = None  # shown once per registration
    return result


# ---- (b) CNN --------------------------------------------------------------------------------

CNN_CONNECTIONS = 16


def cnn_deployment(art: BenchArtifacts, batch: int, workers: int) -> Deployment:
    """The example CNN registered with ``batch``/``workers``, called with a sample PNG."""
    return Deployment("model", f"shapes_b{batch}_w{workers}", art.cnn.mar.name, batch_size=batch,
                      workers=workers, body=sample_image(), content_type=PNG)


def run_inprocess(mar: Path, image_path: Path, batch: int, budget: Budget, *,
                  threads: int = 0, copies: int = 1) -> dict:
    """``benchmarks.inprocess`` in ``copies`` fresh interpreters at once (nothing else
    loaded); items/s summed over the copies."""
    cmd = [sys.executable, "-m", "benchmarks.inprocess", "--mar", str(mar), "--image",
           str(image_path), "--batch", str(batch), "--seconds", str(budget.seconds),
           "--warmup", str(max(budget.warmup_s, 0.2)), "--threads", str(threads)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=REPO) for _ in range(copies)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=budget.seconds + 300)
        if proc.returncode != 0:
            raise ServerError(f"in-process baseline failed: {err.strip()[-800:]}")
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    first = outputs[0]
    return {"batch": batch, "threads": first["threads"], "copies": copies,
            "items_per_s": sum(o["items_per_s"] for o in outputs),
            "forward_items_per_s": sum(o.get("forward_items_per_s", 0.0) for o in outputs),
            "batch_p50_ms": first["batch_p50_ms"]}


def best_inprocess(mar: Path, image_path: Path, batch: int, budget: Budget) -> dict:
    """The limit: the better of one process on every core and one 1-thread process per
    core (both kept under ``variants``)."""
    cores = os.cpu_count() or 1
    variants = [run_inprocess(mar, image_path, batch, budget)]
    if cores > 1:
        variants.append(run_inprocess(mar, image_path, batch, budget, threads=1,
                                      copies=cores))
    best = dict(max(variants, key=lambda v: v["items_per_s"]))
    best["variants"] = variants
    return best


def scenario_cnn(server: ServerProcess, art: BenchArtifacts, budget: Budget,
                 log: Callable[[str], None], quick: bool, *, with_inprocess: bool = True,
                 torchvision_error: str | None = None, note: str | None = None) -> ScenarioResult:
    result = ScenarioResult("b", server.name)
    if note:
        result.notes.append(note)
    if art.cnn is None:
        result.skipped = art.cnn_skip_reason
        return result
    if torchvision_error is not None:
        result.skipped = (f"TorchServe's built-in image_classifier imports torchvision, which "
                          f"does not import in its venv: {torchvision_error}")
        return result
    image = sample_image()
    image_path = art.store.parent / "sample.png"
    image_path.write_bytes(image)
    for batch in (1, 8):
        for workers in (1, 2):
            dep = cnn_deployment(art, batch, workers)
            with deployed(server, dep) as first:
                _run_row(result, server, dep, CNN_CONNECTIONS, budget,
                         f"c={CNN_CONNECTIONS} batch={batch} workers={workers}",
                         {"batch": batch, "workers": workers}, first, log)
    if with_inprocess:
        for batch in (1, 8):
            base = best_inprocess(art.cnn.mar, image_path, batch, budget)
            result.extra[f"inprocess_b{batch}"] = base
            for v in base["variants"]:
                log(f"  in-process handler, batch {batch}, {v['copies']} process(es) x "
                    f"{v['threads']} torch thread(s): {v['items_per_s']:.0f} items/s (model "
                    f"forward alone: {v['forward_items_per_s']:.0f} items/s)")
    result.notes.append(f"CNN archive: {art.cnn.source}; request: a {len(image)} byte PNG "
                        f"(128 x 128), {CNN_CONNECTIONS} connections")
    return result


# ---- (c) per-hop cost -----------------------------------------------------------------------

def scenario_hops(server: ServerProcess, art: BenchArtifacts, budget: Budget,
                  log: Callable[[str], None], quick: bool) -> ScenarioResult:
    result = ScenarioResult("c", server.name)
    try:
        for k, war in sorted(art.chains.items()):
            dep = Deployment("workflow", f"chain{k}", war)
            with deployed(server, dep) as first:
                _run_row(result, server, dep, 1, budget, f"chain of {k}, c=1", {"k": k}, first,
                         log)
    except Unsupported as exc:
        result.skipped = str(exc)
        return result
    add_per_hop(result)
    return result


def add_per_hop(result: ScenarioResult) -> None:
    """ms per hop from the rows of chains of 1, 3 and 5 nodes (params ``k``)."""
    if any(r.load.requests == r.load.errors for r in result.rows):
        result.notes.append("ms per hop not computed: a chain had no successful answer")
        return
    base = result.row(k=1).load
    for k in (3, 5):
        row = result.row(k=k).load
        result.extra[f"per_hop_k{k}"] = {"p50_ms": (row.p50_ms - base.p50_ms) / (k - 1),
                                         "p99_ms": (row.p99_ms - base.p99_ms) / (k - 1)}


# ---- (d) chain throughput -------------------------------------------------------------------

CHAIN_CONNECTIONS = 32
CHAIN_PAIRS = 3  # chain, node, chain, node, ...: one ratio per pair, their mean is the figure


def chain_against_node(result: ScenarioResult, server: ServerProcess, chain: Deployment,
                       node: Deployment, labels: tuple[str, str], budget: Budget,
                       log: Callable[[str], None], quick: bool) -> None:
    """Both deployed at once, then run in alternating pairs, so that a slow moment of a
    shared machine lands on both sides: ``extra["chain_node_ratios"]``, one per pair."""
    ratios = []
    with deployed(server, chain) as first_chain, deployed(server, node) as first_node:
        for pair in range(1 if quick else CHAIN_PAIRS):
            rows = [_run_row(result, server, dep, CHAIN_CONNECTIONS, budget,
                             f"{label}, c={CHAIN_CONNECTIONS}" + (f" #{pair + 1}" if pair else ""),
                             {"what": what, "pair": pair + 1}, first if not pair else None, log)
                    for dep, label, what, first in ((chain, labels[0], "chain", first_chain),
                                                    (node, labels[1], "node", first_node))]
            if rows[1].load.ok_rps:
                ratios.append(rows[0].load.ok_rps / rows[1].load.ok_rps)
    result.extra["chain_node_ratios"] = ratios


def scenario_chain(server: ServerProcess, art: BenchArtifacts, budget: Budget,
                   log: Callable[[str], None], quick: bool) -> ScenarioResult:
    result = ScenarioResult("d", server.name)
    chain = Deployment("workflow", "chain3_batched", art.chain_batched, batch_size=8)
    node = Deployment("model", "echo_node_b8", art.echo_mar, batch_size=8)
    try:
        chain_against_node(result, server, chain, node,
                           ("chain of 3, batch 8", "its node alone, batch 8"), budget, log, quick)
    except Unsupported as exc:
        result.skipped = str(exc)
    return result


# ---- (e) diamond ----------------------------------------------------------------------------

def scenario_diamond(server: ServerProcess, art: BenchArtifacts, budget: Budget,
                     log: Callable[[str], None], quick: bool) -> ScenarioResult:
    result = ScenarioResult("e", server.name)
    dep = Deployment("workflow", "diamond", art.diamond)
    fast, slow = art.diamond_ms
    try:
        with deployed(server, dep) as first:
            _run_row(result, server, dep, 1, budget, f"branches {fast} + {slow} ms, c=1", {},
                     first, log)
    except Unsupported as exc:
        result.skipped = str(exc)
        return result
    result.extra.update({"parallel_ms": max(fast, slow), "serial_ms": fast + slow})
    return result


SCENARIOS: dict[str, tuple[str, Callable[..., ScenarioResult]]] = {
    "a": ("(a) Echo model: the cost of serving nothing", scenario_echo),
    "b": ("(b) The example CNN against its handler called in-process", scenario_cnn),
    "c": ("(c) Per-hop cost: chains of 1, 3, 5 echo nodes", scenario_hops),
    "d": ("(d) Chain throughput against its slowest node", scenario_chain),
    "e": ("(e) Diamond: parallel branches", scenario_diamond),
}


def run_scenario(key: str, server: ServerProcess, art: BenchArtifacts, budget: Budget,
                 log: Callable[[str], None], quick: bool, **kwargs) -> ScenarioResult:
    """Run one scenario; a server failure becomes a skipped result with the reason."""
    _title, fn = SCENARIOS[key]
    try:
        return fn(server, art, budget, log, quick, **kwargs)
    except ServerError as exc:
        result = ScenarioResult(key, server.name, skipped=f"failed: {exc}")
        log(f"  {server.name}: scenario {key} failed: {exc}")
        return result


from . import flow_scenarios  # noqa: E402,F401  (adds (f) and (g) to SCENARIOS)
from . import fused_scenarios  # noqa: E402,F401  (adds (h))
