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
    keeps_own_workers: bool = False  # ``share-workers: false`` on the model


REQUEST = "$request"  # an ``inputs`` source: the request as the start node saw it


@dataclass(frozen=True)
class InputEntry:
    """One entry of a node's ``inputs``: ``source`` is $request or an ancestor; ``select`` an
    optional JMESPath over the source's JSON."""

    name: str
    source: str
    select: Any = None  # dagserve.workflows.expressions.Expression | None


@dataclass(frozen=True)
class NodeFlow:
    """A node's ``nodes:`` entry, compiled (expressions parsed once)."""

    when: Any = None  # Expression | None
    foreach: Any = None  # Expression | None
    max_items: int = 256
    inputs: tuple[InputEntry, ...] = ()
    on_error: str = "fail"  # "fail" | "skip" | "default"
    default: Any = None  # the JSON value of on-error: {default: v}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.when is not None:
            out["when"] = self.when.text
        if self.foreach is not None:
            out["foreach"] = self.foreach.text
            out["maxItems"] = self.max_items
        if self.inputs:
            out["inputs"] = {e.name: e.source if e.select is None
                             else {"from": e.source, "select": e.select.text}
                             for e in self.inputs}
        if self.on_error != "fail":
            out["onError"] = self.on_error if self.on_error == "skip" \
                else {"default": self.default}
        return out


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
    flows: dict[str, NodeFlow] = field(default_factory=dict)  # nodes with a 'nodes:' entry
    shared: dict[str, str] = field(default_factory=dict)  # node -> registered "name[/version]"
    deadline_ms: int | None = None
    # model nodes with the same settings share worker processes (engine/node_groups.py);
    # a serving choice, not a change of what a request does: the fast path keeps it
    share_workers: bool = False

    @property
    def uses_flow(self) -> bool:
        """True when a request needs the general scheduler (conditions, foreach, inputs,
        on-error or a deadline); TorchServe specs never do."""
        return bool(self.flows) or self.deadline_ms is not None

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
            if node in self.shared:
                entry["sharedModel"] = self.shared[node]
            else:
                entry["settings"] = attrs["settings"].to_json()
            if node in self.flows:
                entry.update(self.flows[node].to_json())
            if node in self.models and self.models[node].keeps_own_workers:
                entry["shareWorkers"] = False
            nodes[node] = entry
        described: dict[str, Any] = {
            "name": self.name,
            "start": self.start,
            "leaves": list(self.leaves),
            "nodes": nodes,
            "edges": [[a, b] for a, b in self.edges],
            "globalSettings": self.global_settings.to_json(),
        }
        if self.share_workers:
            described["shareWorkers"] = True
        if self.flows or self.shared or self.deadline_ms is not None:
            described.update(self._flow_summary())
        return described

    def _flow_summary(self) -> dict[str, Any]:
        """The new keys at a glance: conditional nodes and the edges that may be skipped,
        foreach nodes, inputs edges (each ``[source, node, entry]``), shared models,
        deadline."""
        summary: dict[str, Any] = {
            "conditions": {n: f.when.text for n, f in self.flows.items() if f.when},
            "conditionalEdges": [[a, b] for a, b in self.edges
                                 if b in self.flows and self.flows[b].when],
            "foreach": {n: f.foreach.text for n, f in self.flows.items() if f.foreach},
            "inputsEdges": [[e.source, n, e.name] for n, f in self.flows.items()
                            for e in f.inputs],
            "sharedModels": dict(self.shared),
        }
        if self.deadline_ms is not None:
            summary["deadlineMs"] = self.deadline_ms
        return summary
