"""Readable messages for schema errors in the ``nodes:`` and ``workflow:`` sections."""
from __future__ import annotations

from collections.abc import Iterator

from jsonschema import ValidationError

from .errors import Problem
from .schema import (NODES, _suggest, describe, node_keys, share_workers_problem,
                     workflow_keys)
from .yaml_marks import LocatedDocument, Path

_EXPRESSION_KEYS = ("when", "foreach")


def flow_problems(err: ValidationError, doc: LocatedDocument, path: Path) -> Iterator[Problem]:
    if path[0] == NODES:
        yield from _node_problems(err, doc, path)
    else:
        yield from _workflow_problems(err, doc, path)


def _unknown_keys(err: ValidationError, doc: LocatedDocument, path: Path, allowed: list[str],
                  where: str, node: str | None) -> Iterator[Problem]:
    for key in err.instance:
        if key not in allowed:
            hint = _suggest(str(key), allowed) or f" (allowed: {', '.join(allowed)})"
            yield doc.problem(path + (key,), f"unknown key '{key}' {where}{hint}", node=node)


def _node_problems(err: ValidationError, doc: LocatedDocument,
                   path: Path) -> Iterator[Problem]:
    kind = err.validator
    if len(path) == 1:
        if kind == "minLength":
            yield doc.problem(path + (err.instance,), "a node name must not be empty")
        else:
            yield doc.problem(path, "'nodes:' must be a mapping 'node: {when, foreach, "
                                    f"inputs, on-error}}', got {describe(err.instance)}")
        return
    node = str(path[1])
    if len(path) == 2:
        if kind == "additionalProperties":
            yield from _unknown_keys(err, doc, path, node_keys(), "under 'nodes:'", node)
        else:
            yield doc.problem(path, "a node's entry must be a mapping of "
                                    f"{', '.join(node_keys())}, got {describe(err.instance)}",
                              node=node)
        return
    key = path[2]
    if key in _EXPRESSION_KEYS:
        yield doc.problem(path, f"'{key}' must be a JMESPath expression (a non-empty string), "
                                f"got {describe(err.instance)}", node=node)
    elif key == "max-items":
        yield doc.problem(path, f"max-items must be an integer >= 1, got "
                                f"{describe(err.instance)}", node=node)
    elif key == "on-error":
        yield doc.problem(path, "on-error must be 'fail', 'skip' or {default: <JSON value>}, "
                                f"got {describe(err.instance)}", node=node)
    elif key == "inputs" and len(path) == 3:
        yield doc.problem(path, "inputs must be a non-empty mapping 'name: source', got "
                                f"{describe(err.instance)}", node=node)
    elif key == "inputs":
        yield doc.problem(path[:4], "an input is '$request', an ancestor's name, or "
                                    "{from: <node>, select: <JMESPath>}, got "
                                    f"{describe(err.instance)}", node=node)
    else:
        yield doc.problem(path, err.message, node=node)


def _workflow_problems(err: ValidationError, doc: LocatedDocument,
                       path: Path) -> Iterator[Problem]:
    if len(path) == 1 and err.validator == "additionalProperties":
        yield from _unknown_keys(err, doc, path, workflow_keys(), "under 'workflow:'", None)
    elif len(path) == 1:
        yield doc.problem(path, "'workflow:' must be a mapping of workflow settings "
                                f"({', '.join(workflow_keys())}), got {describe(err.instance)}")
    elif path[1] == "deadline-ms":
        yield doc.problem(path, f"deadline-ms must be an integer >= 1 (milliseconds), got "
                                f"{describe(err.instance)}")
    elif path[1] == "share-workers":
        yield doc.problem(path, share_workers_problem(err.instance))
    else:
        yield doc.problem(path, err.message)
