"""From spec text to a CompiledWorkflow: load with marks, validate everything, build the graph.

Every check runs even after an earlier one failed, so one SpecError lists all the problems.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from . import flow_rules
from . import graph as dag_graph
from . import schema, settings
from .compiled import CompiledWorkflow
from .errors import Problem, SpecError
from .schema import DAG, MODELS, NODES, WORKFLOW
from .yaml_marks import LocatedDocument, load_located

SECTIONS = (MODELS, DAG, NODES, WORKFLOW)


def load_spec(text: str, *, name: str = "workflow", source: str = "<spec>") -> CompiledWorkflow:
    """Validate and compile a workflow spec given as YAML text; raises SpecError."""
    doc = load_located(text)
    return compile_document(doc, name=name, source=source)


def load_spec_file(path: str | os.PathLike[str], *, name: str | None = None) -> CompiledWorkflow:
    """Read, validate and compile a spec file; ``name`` defaults to the file's stem."""
    spec_path = Path(path)
    text = read_spec_text(spec_path)
    return load_spec(text, name=name if name is not None else spec_path.stem,
                     source=str(spec_path))


def validate_spec_file(path: str | os.PathLike[str]) -> None:
    """Raise SpecError listing every problem of the spec file (nothing when it is valid)."""
    load_spec_file(path)


def read_spec_text(path: Path) -> str:
    """The file's text; any reason it cannot be read becomes a SpecError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        reason = "spec file not found"
    except IsADirectoryError:
        reason = "spec file is a directory, not a file"
    except PermissionError:
        reason = "spec file cannot be read: permission denied"
    except OSError as err:
        reason = f"spec file cannot be read: {err.strerror or err}"
    else:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
            raise SpecError([Problem(line, col, None, "spec file is not UTF-8 text "
                                     f"(byte {data[err.start]:#04x})")], source=str(path)) from None
    raise SpecError([Problem(None, None, None, reason)], source=str(path))


def compile_document(doc: LocatedDocument, *, name: str, source: str) -> CompiledWorkflow:
    """Check a loaded document completely, then build the CompiledWorkflow or raise."""
    problems = list(doc.problems)
    if doc.data is None:
        if not problems:
            problems.append(Problem(1, 1, None, "the spec is empty: it needs 'models:' and "
                                                "'dag:' sections"))
        raise SpecError(sorted(problems, key=Problem.sort_key), source=source)
    problems.extend(schema.validate(doc))
    data: Any = doc.data
    if not isinstance(data, dict):
        raise SpecError(sorted(problems, key=Problem.sort_key), source=source)

    warnings = [doc.problem((key,), f"unknown top-level key '{key}' is ignored (a spec has "
                                    f"'models:' and 'dag:', and may have 'nodes:' and "
                                    f"'workflow:'"
                                    f"{_close(key, SECTIONS)})")
                for key in data if key not in SECTIONS]

    resolved = settings.resolve(data.get(MODELS), doc)
    problems.extend(resolved.problems)

    dag = data.get(DAG)
    shape = dag_graph.read_dag(dag if isinstance(dag, dict) else {})
    problems.extend(dag_graph.check(shape, resolved.models, doc))
    flow = flow_rules.read_flow(data, doc, shape)
    problems.extend(flow.problems)

    if problems:
        raise SpecError(sorted(problems, key=Problem.sort_key), source=source)

    used = set(shape.nodes)
    warnings.extend(doc.problem((MODELS, model), f"model '{model}' is declared but not used in "
                                                 "'dag:'; it will not be loaded")
                    for model in resolved.models if model not in used)
    compiled = _build(name, source, shape, resolved,
                      [w.format(source) for w in sorted(warnings, key=Problem.sort_key)], doc,
                      shared=flow.shared)
    compiled.flows = flow.flows
    compiled.deadline_ms = flow.deadline_ms
    compiled.share_workers = flow.share_workers
    return compiled


def _close(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _build(name: str, source: str, shape: dag_graph.DagShape,
           resolved: settings.ResolvedSettings, warnings: list[str],
           doc: LocatedDocument, shared: dict[str, str]) -> CompiledWorkflow:
    graph = dag_graph.build_graph(shape)
    for node in shape.nodes:
        model = resolved.models.get(node)
        position = doc.position(shape.first_seen[node])
        graph.nodes[node].update(
            kind="shared" if node in shared else "model" if model else "function",
            settings=model.settings if model else resolved.global_settings,
            url=model.url if model and node not in shared else None,
            line=position[0] if position else None,
            col=position[1] if position else None,
        )
    children = shape.children()
    parents = shape.parents()
    return CompiledWorkflow(
        name=name,
        source=source,
        graph=graph,
        start=next(n for n in shape.nodes if not parents[n]),
        leaves=[n for n in shape.nodes if not children[n]],
        topo_order=dag_graph.topo_order(graph, shape.nodes),
        parents=parents,
        children=children,
        edges=list(shape.edges),
        models={n: m for n, m in resolved.models.items() if n in graph and n not in shared},
        functions=[n for n in shape.nodes if n not in resolved.models],
        global_settings=resolved.global_settings,
        warnings=warnings,
        shared={n: m for n, m in shared.items() if n in graph},
    )
