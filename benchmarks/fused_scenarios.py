"""Chains that run in one worker call: the same echo work as (c) and (d), but

- (h): the nodes are a workflow's functions (``f1`` ... ``f5`` in models/workflow_handler.py)
  instead of models, so dagserve runs them in one worker process and a chain of them in one
  worker call (engine/node_groups.py). TorchServe runs every function node as a model of its
  own.
- (i): the nodes are the echo models of (c) and (d), in a spec that says
  ``workflow: share-workers: true``: dagserve serves them in one worker process and a chain
  of them in one call. TorchServe reads only ``models:`` and ``dag:``, so the same archive
  runs there with a worker per model.

Rows: chains of 1, 3 and 5 nodes at one connection (ms per hop = (chain_k - chain_1) /
(k - 1)); a chain of 3 and a chain of 1 (its node alone), batch size 8, at 32 connections,
in alternating pairs (the chain's share of its node's req/s: the mean of the pairs).
"""

from __future__ import annotations

from typing import Callable

from .artifacts import BenchArtifacts, build_function_wars, build_shared_model_wars
from .scenarios import (SCENARIOS, Deployment, ScenarioResult, Unsupported, _run_row,
                        add_per_hop, chain_against_node, deployed)
from .servers import ServerProcess


def _one_call_chains(key: str, prefix: str, kind: str,
                     build: Callable[[BenchArtifacts], dict[str, str]]) -> Callable:
    """The scenario measuring chains ``<prefix>{1,3,5}`` and ``<prefix>{1,3}_b8``."""

    def scenario(server: ServerProcess, art: BenchArtifacts, budget, log: Callable,
                 quick: bool) -> ScenarioResult:
        result = ScenarioResult(key, server.name)
        result.notes.append(
            "its node alone is a workflow of that one node (a function cannot be called "
            "alone), so the chain's share measures its hops, not the /wfpredict route; "
            "scenario (d) compares with the bare echo model's /predictions, which answers "
            "about 10-20 % more req/s than a one-node workflow")
        wars = build(art)
        try:
            for k in (1, 3, 5):
                dep = Deployment("workflow", f"{prefix}{k}", wars[f"{prefix}{k}"])
                with deployed(server, dep) as first:
                    _run_row(result, server, dep, 1, budget, f"{k} {kind} nodes, c=1",
                             {"k": k}, first, log)
            chain, node = (Deployment("workflow", f"{prefix}{k}_b8", wars[f"{prefix}{k}_b8"],
                                      batch_size=8) for k in (3, 1))
            chain_against_node(result, server, chain, node,
                               (f"3 {kind} nodes, batch 8", f"1 {kind} node, batch 8"), budget,
                               log, quick)
        except Unsupported as exc:
            result.skipped = str(exc)
            return result
        add_per_hop(result)
        return result

    return scenario


SCENARIOS["h"] = ("(h) Chains of function nodes (one worker, one call per chain)",
                  _one_call_chains("h", "fchain", "function", build_function_wars))
SCENARIOS["i"] = ("(i) Chains of model nodes with share-workers (one worker, one call per "
                  "chain)", _one_call_chains("i", "schain", "model", build_shared_model_wars))
