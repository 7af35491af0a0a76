"""Scenarios for the workflow language beyond TorchServe (docs/workflows.md):

(f) ``when``: a chain of 5 echo nodes at one connection, plain (the fast path), with a
    ``when`` on every node after the start (the general path; every condition true), and the
    same plus a sixth node whose ``when`` is false (a skipped branch);
    us per node = (p50 with - p50 plain) / 4 conditions.
(g) ``foreach``: an echo node, then a batch-size-8 echo node run over 32 items, at one
    connection; the batch sizes that node saw come from its handler's ``ForeachBatches``
    counter in /metrics.
"""

from __future__ import annotations

import json
import re
from typing import Callable

from .artifacts import MODELS, BenchArtifacts, _mar, _models_header, _war
from .scenarios import SCENARIOS, Deployment, ScenarioResult, Unsupported, _run_row, deployed
from .servers import ServerProcess, http_call

WHEN = "n == `42`"  # true for the benchmark's echo payload, at every node
FOREACH_ITEMS = 32
FOREACH_BATCH = 8
FOREACH_BODY = json.dumps({"items": list(range(FOREACH_ITEMS))}).encode()
JSON_TYPE = "application/json"


def when_spec(echo_mar: str, *, conditions: bool, skipped_branch: bool) -> str:
    lines = _models_header(1, 5)
    nodes = [f"n{i}" for i in range(1, 6)] + (["skipped"] if skipped_branch else [])
    for node in nodes:
        lines += [f"  {node}:", f"    url: {echo_mar}"]
    lines += ["dag:", "  n1: [n2" + (", skipped]" if skipped_branch else "]"),
              "  n2: [n3]", "  n3: [n4]", "  n4: [n5]"]
    if conditions:
        lines.append("nodes:")
        lines += [f'  n{i}: {{when: "{WHEN}"}}' for i in range(2, 6)]
        if skipped_branch:
            lines.append('  skipped: {when: "n == `0`"}')
    return "\n".join(lines) + "\n"


def foreach_spec(echo_mar: str, batch_mar: str) -> str:
    lines = _models_header(FOREACH_BATCH, 5)
    lines += ["  first:", f"    url: {echo_mar}", "    batch-size: 1",
              "  each:", f"    url: {batch_mar}",
              "dag:", "  first: [each]",
              "nodes:", f'  each: {{foreach: "items", max-items: {FOREACH_ITEMS}}}']
    return "\n".join(lines) + "\n"


def build_flow_wars(art: BenchArtifacts) -> dict[str, str]:
    """The (f) and (g) workflows, archived into the scenarios' store."""
    specs = art.store.parent / "specs"
    batch = _mar(art.store, "batch_echo", MODELS / "batch_echo_handler.py",
                 extra=[MODELS / "echo_handler.py"])
    wars = {name: _war(art.store, name, when_spec(art.echo_mar, conditions=c, skipped_branch=s),
                       specs)
            for name, c, s in (("when_none", False, False), ("when_all", True, False),
                               ("when_skip", True, True))}
    wars["foreach32"] = _war(art.store, "foreach32", foreach_spec(art.echo_mar, batch), specs)
    return wars


DAGSERVE_ONLY = ("dagserve's own workflow keys: TorchServe does not know them (its run "
                 "fails or ignores them), so there is nothing to compare")


def scenario_when(server: ServerProcess, art: BenchArtifacts, budget, log: Callable,
                  quick: bool) -> ScenarioResult:
    result = ScenarioResult("f", server.name)
    if server.name != "dagserve":
        result.skipped = DAGSERVE_ONLY
        return result
    wars = build_flow_wars(art)
    configs = (("when_none", "5 echo nodes, no when, c=1"),
               ("when_all", "when on nodes 2-5, c=1"),
               ("when_skip", "same + 1 skipped branch, c=1"))
    try:
        for name, config in configs:
            dep = Deployment("workflow", name, wars[name], content_type=JSON_TYPE)
            with deployed(server, dep) as first:
                _run_row(result, server, dep, 1, budget, config, {"what": name}, first, log)
    except Unsupported as exc:
        result.skipped = str(exc)
        return result
    plain, conditions = result.row(what="when_none"), result.row(what="when_all")
    skipped = result.row(what="when_skip")
    result.extra["when_us_per_node_p50"] = 1000 * (conditions.load.p50_ms
                                                   - plain.load.p50_ms) / 4
    result.extra["skipped_branch_us_p50"] = 1000 * (skipped.load.p50_ms
                                                    - conditions.load.p50_ms)
    return result


def _foreach_batches(server: ServerProcess) -> dict[int, float]:
    reply = http_call("GET", f"http://127.0.0.1:{server.ports.metrics}/metrics")
    sizes: dict[int, float] = {}
    for line in reply.text.splitlines():
        match = re.match(r'ForeachBatches\{.*BatchSize="(\d+)".*\}\s+([0-9.e+]+)$', line)
        if match:
            sizes[int(match.group(1))] = sizes.get(int(match.group(1)), 0) + \
                float(match.group(2))
    return sizes


def scenario_foreach(server: ServerProcess, art: BenchArtifacts, budget, log: Callable,
                     quick: bool) -> ScenarioResult:
    result = ScenarioResult("g", server.name)
    if server.name != "dagserve":
        result.skipped = DAGSERVE_ONLY
        return result
    wars = build_flow_wars(art)
    dep = Deployment("workflow", "foreach32", wars["foreach32"], body=FOREACH_BODY,
                     content_type=JSON_TYPE)
    try:
        with deployed(server, dep) as first:
            _run_row(result, server, dep, 1, budget,
                     f"{FOREACH_ITEMS} items, batch {FOREACH_BATCH}, c=1", {}, first, log)
            batches = _foreach_batches(server)
    except Unsupported as exc:
        result.skipped = str(exc)
        return result
    total = sum(batches.values())
    result.extra["batch_sizes"] = {str(k): int(v) for k, v in sorted(batches.items())}
    result.extra["mean_batch"] = (sum(k * v for k, v in batches.items()) / total
                                  if total else None)
    return result


FLOW_SCENARIOS = {
    "f": ("(f) when on every node, and a skipped branch", scenario_when),
    "g": ("(g) foreach over 32 items on a batch-size-8 echo node", scenario_foreach),
}
SCENARIOS.update(FLOW_SCENARIOS)
