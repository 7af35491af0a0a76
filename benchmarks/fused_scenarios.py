"""(h) Chains of function nodes: the same echo work as (c) and (d), but the nodes are a
workflow's functions (``f1`` ... ``f5`` in models/workflow_handler.py) instead of models, so
dagserve runs them in one worker process and a chain of them in one worker call
(engine/function_nodes.py). TorchServe runs every function node as a model of its own.

Rows: chains of 1, 3 and 5 function nodes at one connection (ms per hop = (chain_k -
chain_1) / (k - 1)); a chain of 3 and a chain of 1 (its node alone), batch size 8, at 32
connections (the chain's share of its node's req/s).
"""

from __future__ import annotations

from typing import Callable

from .artifacts import BenchArtifacts, build_function_wars
from .scenarios import (CHAIN_CONNECTIONS, SCENARIOS, Deployment, ScenarioResult, Unsupported,
                        _run_row, add_per_hop, deployed)
from .servers import ServerProcess


def scenario_function_chains(server: ServerProcess, art: BenchArtifacts, budget,
                             log: Callable, quick: bool) -> ScenarioResult:
    result = ScenarioResult("h", server.name)
    wars = build_function_wars(art)
    try:
        for k in (1, 3, 5):
            dep = Deployment("workflow", f"fchain{k}", wars[f"fchain{k}"])
            with deployed(server, dep) as first:
                _run_row(result, server, dep, 1, budget, f"{k} function nodes, c=1",
                         {"k": k}, first, log)
        for k, what in ((3, "chain"), (1, "node")):
            dep = Deployment("workflow", f"fchain{k}_b8", wars[f"fchain{k}_b8"], batch_size=8)
            with deployed(server, dep) as first:
                _run_row(result, server, dep, CHAIN_CONNECTIONS, budget,
                         f"{k} function node(s), batch 8, c={CHAIN_CONNECTIONS}",
                         {"what": what}, first, log)
    except Unsupported as exc:
        result.skipped = str(exc)
        return result
    add_per_hop(result)
    return result


SCENARIOS["h"] = ("(h) Chains of function nodes (one worker, one call per chain)",
                  scenario_function_chains)
