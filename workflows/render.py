"""Pictures of a workflow's DAG: Mermaid, Graphviz DOT, or a JSON graph (what the dashboard
draws).

Everything is read from the workflow's JSON description (``CompiledWorkflow.to_json()``,
the ``workflowDag`` of ``GET /workflows/{w}``), so every attribute a spec can carry shows
up without this module knowing how it was compiled. Drawn distinctly:

- model nodes (boxes) and function nodes (rounded);
- a node with a condition (``when``): dashed outline, its condition in the label;
- a ``foreach`` node: a double outline (Mermaid's subroutine shape), the expression in the
  label;
- a node served by a shared, separately registered model (``sharedModel``): a hexagon;
- ``inputs`` edges (a node reading an ancestor's output, or the request, by name): dotted
  arrows labelled with the input's name, next to the solid data edges of ``dag:``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REQUEST = "$request"
FORMATS = ("mermaid", "dot", "json")
_EXTENSIONS = {".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot",
               ".json": "json"}


class RenderError(ValueError):
    """An unknown format or file extension."""


def format_for_path(path: str | Path) -> str:
    """The format a file name asks for: .mmd/.mermaid, .dot/.gv, .json."""
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise RenderError(f"cannot tell the picture format from {str(path)!r}: use a .mmd or "
                          f".mermaid (Mermaid), .dot or .gv (Graphviz) or .json file name")
    return _EXTENSIONS[suffix]


def graph_model(described: dict[str, Any]) -> dict[str, Any]:
    """Nodes and typed edges of a workflow description (``CompiledWorkflow.to_json()``)."""
    nodes = []
    for name, info in described.get("nodes", {}).items():
        node: dict[str, Any] = {"id": name, "kind": info.get("kind", "function")}
        for key in ("url", "when", "foreach", "sharedModel", "onError"):
            if info.get(key) is not None:
                node[key] = info[key]
        nodes.append(node)
    edges = [{"from": a, "to": b, "kind": "data"} for a, b in described.get("edges", [])]
    inputs = described.get("inputsEdges")
    if inputs is None:  # read the per-node entries: {"inputs": {name: source | {from}}}
        inputs = [[src if isinstance(src, str) else src.get("from"), node, entry]
                  for node, info in described.get("nodes", {}).items()
                  for entry, src in (info.get("inputs") or {}).items()]
    for source, node, entry in inputs:
        edges.append({"from": source, "to": node, "kind": "inputs", "label": str(entry)})
    if any(e["from"] == REQUEST for e in edges):
        nodes.insert(0, {"id": REQUEST, "kind": "request"})
    return {"name": described.get("name", ""), "start": described.get("start"),
            "leaves": list(described.get("leaves", [])), "nodes": nodes, "edges": edges}


def _label_lines(node: dict[str, Any]) -> list[str]:
    if node["kind"] == "request":
        return ["request"]
    lines = [node["id"]]
    if node.get("sharedModel"):
        lines.append(f"shared: {node['sharedModel']}")
    elif node.get("url"):
        lines.append(str(node["url"]))
    if node.get("when"):
        lines.append(f"when: {node['when']}")
    if node.get("foreach"):
        lines.append(f"foreach: {node['foreach']}")
    if node.get("onError") is not None:
        on_error = node["onError"]
        lines.append("on-error: " + (on_error if isinstance(on_error, str) else
                                     "default " + json.dumps(on_error.get("default"))))
    return lines


# -- Mermaid ----------------------------------------------------------------------------

def _mermaid_text(text: str) -> str:
    return (text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;")
            .replace(">", "#gt;"))


def to_mermaid(graph: dict[str, Any]) -> str:
    ids = {node["id"]: f"n{i}" for i, node in enumerate(graph["nodes"])}
    out = ["flowchart TD"]
    for node in graph["nodes"]:
        label = "<br/>".join(_mermaid_text(line) for line in _label_lines(node))
        nid = ids[node["id"]]
        if node["kind"] == "request":
            shape = f'(["{label}"])'
        elif node.get("sharedModel"):
            shape = f'{{{{"{label}"}}}}'
        elif node.get("foreach"):
            shape = f'[["{label}"]]'
        elif node["kind"] == "model":
            shape = f'["{label}"]'
        else:
            shape = f'("{label}")'
        out.append(f"    {nid}{shape}")
    for edge in graph["edges"]:
        a, b = ids.get(edge["from"]), ids.get(edge["to"])
        if a is None or b is None:
            continue
        if edge["kind"] == "inputs":
            out.append(f'    {a} -. "{_mermaid_text(edge["label"])}" .-> {b}')
        else:
            out.append(f"    {a} --> {b}")
    classes = {"model": [], "function": [], "conditional": [], "foreach": [], "shared": []}
    for node in graph["nodes"]:
        nid = ids[node["id"]]
        if node["kind"] in ("model", "function"):
            classes[node["kind"]].append(nid)
        for key, cls in (("when", "conditional"), ("foreach", "foreach"),
                         ("sharedModel", "shared")):
            if node.get(key):
                classes[cls].append(nid)
    styles = {"model": "fill:#dbeafe,stroke:#1d4ed8",
              "function": "fill:#f1f5f9,stroke:#475569",
              "conditional": "stroke-dasharray: 5 5,stroke:#b45309",
              "foreach": "stroke-width:3px,stroke:#7c3aed",
              "shared": "fill:#dcfce7,stroke:#15803d"}
    for cls, members in classes.items():
        if members:
            out.append(f"    classDef {cls} {styles[cls]}")
            out.append(f"    class {','.join(members)} {cls}")
    return "\n".join(out) + "\n"


# -- Graphviz DOT -------------------------------------------------------------------------

def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: dict[str, Any]) -> str:
    out = [f"digraph {_dot_quote(graph['name'] or 'workflow')} {{",
           "    rankdir=TB;",
           '    node [fontname="Helvetica", fontsize=11];',
           '    edge [fontname="Helvetica", fontsize=9];']
    for node in graph["nodes"]:
        attrs = {"label": "\n".join(_label_lines(node))}
        styles = []
        if node["kind"] == "request":
            attrs["shape"] = "ellipse"
        elif node.get("sharedModel"):
            attrs.update(shape="hexagon", fillcolor="#dcfce7")
            styles.append("filled")
        elif node["kind"] == "model":
            attrs.update(shape="box", fillcolor="#dbeafe")
            styles.append("filled")
        else:
            attrs["shape"] = "box"
            styles.append("rounded")
        if node.get("when"):
            styles.append("dashed")
        if node.get("foreach"):
            attrs["peripheries"] = "2"
        if styles:
            attrs["style"] = ",".join(styles)
        body = ", ".join(f"{k}={_dot_quote(v)}" for k, v in attrs.items())
        out.append(f"    {_dot_quote(node['id'])} [{body}];")
    for edge in graph["edges"]:
        line = f"    {_dot_quote(edge['from'])} -> {_dot_quote(edge['to'])}"
        if edge["kind"] == "inputs":
            line += f' [style="dotted", color="#7c3aed", label={_dot_quote(edge["label"])}]'
        out.append(line + ";")
    out.append("}")
    return "\n".join(out) + "\n"


def render(described: dict[str, Any], fmt: str) -> str:
    """The DAG of a workflow description in ``fmt``: mermaid, dot or json."""
    graph = graph_model(described)
    if fmt == "mermaid":
        return to_mermaid(graph)
    if fmt == "dot":
        return to_dot(graph)
    if fmt == "json":
        return json.dumps(graph, indent=2) + "\n"
    raise RenderError(f"unknown graph format {fmt!r}; use one of {', '.join(FORMATS)}")


def write_picture(described: dict[str, Any], path: str | Path) -> str:
    """Write the picture ``path``'s extension asks for; returns the format used."""
    fmt = format_for_path(path)
    Path(path).write_text(render(described, fmt), encoding="utf-8")
    return fmt
