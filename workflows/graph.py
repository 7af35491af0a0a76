"""The ``dag:`` section as a graph: reading it, the name and graph rules, the DiGraph.

Rules: a node that is not a declared model must be a valid Python function name; no self
loops; no cycles (each named, at the edge that closes it); exactly one start node.
Duplicate edges are merged silently.
"""
from __future__ import annotations

import difflib
import keyword
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .errors import Problem
from .schema import DAG
from .yaml_marks import LocatedDocument, Path

Edge = tuple[str, str]


@dataclass
class DagShape:
    """What ``dag:`` declares, in the order it is written."""

    nodes: list[str] = field(default_factory=list)  # by first appearance
    edges: list[Edge] = field(default_factory=list)  # by declaration, merged, no self loops
    first_seen: dict[str, Path] = field(default_factory=dict)
    edge_paths: dict[Edge, Path] = field(default_factory=dict)  # where each edge is written
    self_loops: dict[str, Path] = field(default_factory=dict)
    complete: bool = True  # False when an entry was malformed (already reported)

    def children(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {n: [] for n in self.nodes}
        for parent, child in self.edges:
            result[parent].append(child)
        return result

    def parents(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {n: [] for n in self.nodes}
        for parent, child in self.edges:
            result[child].append(parent)
        return result


def read_dag(dag: dict[str, Any]) -> DagShape:
    """Nodes and edges of a ``dag:`` mapping; malformed entries (schema errors) are skipped."""
    shape = DagShape()

    def see(node: str, path: Path) -> None:
        if node not in shape.first_seen:
            shape.first_seen[node] = path
            shape.nodes.append(node)

    for parent, value in dag.items():
        if not parent:
            shape.complete = False
            continue
        see(parent, (DAG, parent))
        if value is None:
            continue
        if not isinstance(value, list):
            shape.complete = False
            continue
        for i, child in enumerate(value):
            path: Path = (DAG, parent, i)
            if not isinstance(child, str) or not child:
                shape.complete = False
                continue
            see(child, path)
            if child == parent:
                shape.self_loops.setdefault(parent, path)
            elif (parent, child) not in shape.edge_paths:
                shape.edge_paths[(parent, child)] = path
                shape.edges.append((parent, child))
    return shape


def check(shape: DagShape, models: Collection[str], doc: LocatedDocument) -> list[Problem]:
    """Every name and graph problem of the DAG."""
    problems = _check_names(shape, models, doc)
    for node, path in shape.self_loops.items():
        problems.append(doc.problem(path, f"self loop: '{node}' lists itself as a child",
                                    node=node))
    cycles = _find_cycles(shape, doc)
    problems.extend(cycles)
    if shape.complete and shape.nodes:
        problems.extend(_check_start(shape, doc))
    return problems


def is_function_name(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _check_names(shape: DagShape, models: Collection[str], doc: LocatedDocument) -> list[Problem]:
    problems = []
    for node in shape.nodes:
        if node in models or is_function_name(node):
            continue
        close = difflib.get_close_matches(node, list(models), n=1, cutoff=0.75)
        hint = f" (did you mean model '{close[0]}'?)" if close else ""
        problems.append(doc.problem(
            shape.first_seen[node],
            f"'{node}' is not a model declared under 'models:' and not a valid Python "
            f"function name for the handler file{hint}", node=node))
    return problems


def _find_cycles(shape: DagShape, doc: LocatedDocument) -> list[Problem]:
    """One problem per strongly connected component: the first cycle a depth-first walk
    (in declaration order) closes, placed at the edge that closes it."""
    children = shape.children()
    graph = nx.DiGraph(shape.edges)
    component_of: dict[str, int] = {}
    for index, component in enumerate(nx.strongly_connected_components(graph)):
        for node in component:
            component_of[node] = index
    reported: set[int] = set()
    problems: list[Problem] = []
    done: set[str] = set()
    for root in shape.nodes:
        if root in done:
            continue
        path: list[str] = [root]
        on_path = {root}
        stack = [iter(children[root])]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            parent = path[-1]
            if child in on_path:
                component = component_of[parent]
                if component not in reported:
                    reported.add(component)
                    cycle = path[path.index(child):] + [child]
                    problems.append(doc.problem(shape.edge_paths[(parent, child)],
                                                "cycle: " + " -> ".join(cycle)))
            elif child not in done:
                path.append(child)
                on_path.add(child)
                stack.append(iter(children[child]))
    return problems


def _check_start(shape: DagShape, doc: LocatedDocument) -> list[Problem]:
    parents = shape.parents()
    starts = [n for n in shape.nodes if not parents[n]]
    if len(starts) == 1:
        return []
    if not starts:  # only a cycle leaves no start node, and each cycle is reported already
        return []
    listed = ", ".join(f"'{n}' (line {_line(doc, shape.first_seen[n])})" for n in starts)
    return [doc.problem(shape.first_seen[starts[0]],
                        f"several start nodes (nodes no other node lists as a child): {listed}; "
                        "a workflow has exactly one")]


def _line(doc: LocatedDocument, path: Path) -> str:
    position = doc.position(path)
    return str(position[0]) if position else "?"


def build_graph(shape: DagShape) -> nx.DiGraph:
    """A DiGraph of the DAG with nodes and edges inserted in spec order (no attributes yet)."""
    graph = nx.DiGraph()
    graph.add_nodes_from(shape.nodes)
    graph.add_edges_from(shape.edges)
    return graph


def topo_order(graph: nx.DiGraph, nodes: list[str]) -> list[str]:
    """Topological order; among nodes that are ready together, the first written goes first."""
    index = {node: i for i, node in enumerate(nodes)}
    return list(nx.lexicographical_topological_sort(graph, key=index.__getitem__))
