"""The spec's additions beyond TorchServe (WORKFLOW-SPEC.md): ``nodes:`` (when, foreach,
max-items, inputs, on-error), ``model:`` under a model (a shared registered model) and
``workflow:`` (deadline-ms, share-workers). Checked against the DAG and compiled once; the
schema has already reported malformed values, which are skipped here.
"""
from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .compiled import REQUEST, SPEC_KEYS, InputEntry, NodeFlow
from .errors import Problem
from .expressions import compile_at
from .graph import DagShape
from .schema import MODELS, NODES, SHARED, URL, WORKFLOW
from .yaml_marks import LocatedDocument

DEFAULT_MAX_ITEMS = 256


@dataclass
class FlowSpec:
    flows: dict[str, NodeFlow] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)
    deadline_ms: int | None = None
    share_workers: bool = False
    problems: list[Problem] = field(default_factory=list)


def read_flow(data: dict[str, Any], doc: LocatedDocument, shape: DagShape) -> FlowSpec:
    result = FlowSpec()
    result.shared = _shared_models(data.get(MODELS), doc, result.problems)
    workflow = data.get(WORKFLOW)
    if isinstance(workflow, dict):
        deadline = workflow.get("deadline-ms")
        if isinstance(deadline, int) and not isinstance(deadline, bool) and deadline >= 1:
            result.deadline_ms = deadline
        result.share_workers = workflow.get("share-workers") is True
    nodes = data.get(NODES)
    if not isinstance(nodes, dict):
        return result
    graph = nx.DiGraph()
    graph.add_nodes_from(shape.nodes)
    graph.add_edges_from(shape.edges)
    parents = shape.parents()
    for node, entry in nodes.items():
        if not isinstance(entry, dict) or not node:
            continue
        if node not in graph:
            close = difflib.get_close_matches(node, shape.nodes, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            result.problems.append(doc.problem((NODES, node), f"'{node}' under 'nodes:' is "
                                               f"not a node of 'dag:'{hint}", node=node))
            continue
        flow = _node_flow(node, entry, doc, is_start=not parents[node],
                          ancestors=nx.ancestors(graph, node), problems=result.problems)
        if flow != NodeFlow():
            result.flows[node] = flow
    return result


def _shared_models(models: Any, doc: LocatedDocument, problems: list[Problem]) -> dict[str, str]:
    """Models written ``node: {model: registered}``: no url, no per-node settings."""
    shared: dict[str, str] = {}
    if not isinstance(models, dict):
        return shared
    for node, value in models.items():
        if not isinstance(value, dict) or SHARED not in value:
            continue
        target = value[SHARED]
        if URL in value:
            problems.append(doc.problem((MODELS, node, URL), "a node has either 'url:' (its "
                                        "own model) or 'model:' (a registered model it "
                                        "shares), not both", node=node))
        for key in value:
            if key in SPEC_KEYS:
                problems.append(doc.problem(
                    (MODELS, node, key), f"'{key}' cannot be set on a shared model "
                    f"('model: {target}'): it is served with the settings it was registered "
                    "with (change them at /models)", node=node))
        if isinstance(target, str):
            shared[node] = target
    return shared


def _node_flow(node: str, entry: dict[str, Any], doc: LocatedDocument, *, is_start: bool,
               ancestors: Collection[str], problems: list[Problem]) -> NodeFlow:
    base = (NODES, node)

    def expression(key: str, value: Any, path=None):
        if not isinstance(value, str) or not value:
            return None  # the schema reported it
        return compile_at(doc, path or base + (key,), value, node=node, key=key,
                          problems=problems)

    when = expression("when", entry.get("when"))
    if "when" in entry and is_start:
        problems.append(doc.problem(base + ("when",), "the start node cannot have 'when': it "
                                    "always runs (put the condition on its children)",
                                    node=node))
    foreach = expression("foreach", entry.get("foreach"))
    if "foreach" in entry and is_start:
        problems.append(doc.problem(base + ("foreach",), "the start node cannot have "
                                    "'foreach': its input is the request's raw body; add a "
                                    "node before it that parses the list", node=node))
    if "foreach" in entry and "inputs" in entry:
        problems.append(doc.problem(base + ("inputs",), "a 'foreach' node receives each item "
                                    "as its body; it cannot also have 'inputs' (select what "
                                    "the items need in the foreach expression)", node=node))
    max_items = entry.get("max-items", DEFAULT_MAX_ITEMS)
    if "max-items" in entry and "foreach" not in entry:
        problems.append(doc.problem(base + ("max-items",), "'max-items' limits a 'foreach': "
                                    "this node has none", node=node))
    if not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1:
        max_items = DEFAULT_MAX_ITEMS
    inputs = _inputs(node, entry.get("inputs"), doc, ancestors, problems, expression)
    on_error, default = "fail", None
    value = entry.get("on-error")
    if value in ("fail", "skip"):
        on_error = value
    elif isinstance(value, dict) and "default" in value and len(value) == 1:
        on_error, default = "default", value["default"]
    return NodeFlow(when=when, foreach=foreach, max_items=max_items, inputs=inputs,
                    on_error=on_error, default=default)


def _inputs(node: str, value: Any, doc: LocatedDocument, ancestors: Collection[str],
            problems: list[Problem], expression) -> tuple[InputEntry, ...]:
    if not isinstance(value, dict):
        return ()
    entries = []
    for name, source in value.items():
        path = (NODES, node, "inputs", name)
        select = None
        if isinstance(source, dict):
            select = expression("select", source.get("select"), path + ("select",))
            path, source = path + ("from",), source.get("from")
        if not isinstance(source, str) or not source:
            continue  # the schema reported it
        if source != REQUEST and source not in ancestors:
            if source == node:
                why = "a node cannot take its own output as an input"
            else:
                close = difflib.get_close_matches(source, sorted(ancestors), n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                known = ", ".join(sorted(ancestors)) or "none"
                why = (f"input '{name}' names '{source}', which is not an ancestor of "
                       f"'{node}' (ancestors: {known}; or '$request'){hint}")
            problems.append(doc.problem(path, why, node=node))
            continue
        entries.append(InputEntry(str(name), source, select))
    return tuple(entries)
