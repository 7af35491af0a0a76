"""Plain data produced by compiling a workflow spec."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx

# spec key -> NodeSettings field; the order is the spec's (and the schema's)
SPEC_KEYS: dict[str, str] = {
    "min-workers": "min_workers",
    "max-workers": "max_workers",
    "batch-size": "batch_size",
    "max-batch-delay": "max_batch_delay_ms",
    "retry-attempts": "retry_attempts",
    "timeout-ms": "timeout_ms",
}

# NodeSettings field -> the camelCase name TorchServe's describe API uses
_JSON_KEYS: dict[str, str] = {
    "min_workers": "minWorkers",
    "max_workers": "maxWorkers",
    "batch_size": "batchSize",
    "max_batch_delay_ms": "maxBatchDelay",
    "retry_attempts": "retryAttempts",
    "timeout_ms": "timeoutMs",
}


@dataclass(frozen=True)
class NodeSettings:
    """How one node is served: workers, batching, retries, time limit."""

    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay_ms: int
    retry_attempts: int
    timeout_ms: int

    def to_json(self) -> dict[str, int]:
        """camelCase keys, as in ``GET /workflows/{w}`` (minWorkers, maxBatchDelay, ...)."""
        return {_JSON_KEYS[k]: v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ModelSpec:
    """A model declared under ``models:``; ``settings`` are effective (globals + overrides)."""

    name: str
    url: str
    settings: NodeSettings
    overrides: dict[str, int] = field(default_factory=dict)  # spec key -> value written
    line: int | None = None


@dataclass
class CompiledWorkflow:
    """A validated workflow spec as a graph the scheduler can run.

    ``graph`` nodes carry ``kind`` ("model" | "function"), ``settings`` (NodeSettings),
    ``url`` (None for functions), and ``line``/``col`` (where the node first appears in the
    spec, 1-based).
    """

    name: str
    source: str
    graph: nx.DiGraph
    start: str
    leaves: list[str]
    topo_order: list[str]
    parents: dict[str, list[str]]
    children: dict[str, list[str]]
    edges: list[tuple[str, str]]
    models: dict[str, ModelSpec]
    functions: list[str]
    global_settings: NodeSettings
    warnings: list[str] = field(default_factory=list)

    def kind(self, node: str) -> str:
        return str(self.graph.nodes[node]["kind"])

    def settings(self, node: str) -> NodeSettings:
        settings: NodeSettings = self.graph.nodes[node]["settings"]
        return settings

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description of the DAG (for ``GET /workflows/{w}``)."""
        nodes: dict[str, Any] = {}
        for node in self.topo_order:
            attrs = self.graph.nodes[node]
            entry: dict[str, Any] = {"kind": attrs["kind"]}
            if attrs["url"] is not None:
                entry["url"] = attrs["url"]
            entry["settings"] = attrs["settings"].to_json()
            nodes[node] = entry
        return {
            "name": self.name,
            "start": self.start,
            "leaves": list(self.leaves),
            "nodes": nodes,
            "edges": [[a, b] for a, b in self.edges],
            "globalSettings": self.global_settings.to_json(),
        }
