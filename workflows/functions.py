"""Function nodes against the workflow's handler file.

``list_module_functions`` reads a handler file with ``ast`` (nothing is imported or run), so
the server can refuse a workflow before starting any worker; ``check_functions`` is the
check itself, also used with the names a worker found after importing the file.
"""
from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .compiled import CompiledWorkflow
from .errors import Problem, SpecError


def list_module_functions(path: str | os.PathLike[str]) -> set[str]:
    """Names the module at ``path`` binds at top level that can be functions.

    Counted: ``def`` / ``async def``, names assigned (``post = functools.partial(...)``) and
    names imported with ``from m import f``, also inside top-level ``if``/``try``/``with``
    blocks. Not counted: classes and plain ``import m`` (modules). A ``from m import *``
    cannot be seen without importing; its names are missing here, and only the check in a
    worker (after importing) finds them. Unreadable file or bad syntax -> SpecError.
    """
    file = Path(path)
    try:
        text = file.read_bytes()
    except OSError as err:
        reason = "not found" if isinstance(err, FileNotFoundError) else (err.strerror or str(err))
        raise SpecError([Problem(None, None, None, f"handler file cannot be read: {reason}")],
                        source=str(file)) from None
    try:
        tree = ast.parse(text, filename=str(file))
    except SyntaxError as err:
        raise SpecError([Problem(err.lineno, err.offset, None,
                                 f"handler file has a syntax error: {err.msg}")],
                        source=str(file)) from None
    except ValueError as err:  # e.g. null bytes
        raise SpecError([Problem(None, None, None, f"handler file cannot be parsed: {err}")],
                        source=str(file)) from None
    return set(_bound_names(tree.body))


def _bound_names(body: Iterable[ast.stmt]) -> Iterator[str]:
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield stmt.name
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                yield from _target_names(target)
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            yield from _target_names(stmt.target)
        elif isinstance(stmt, ast.ImportFrom):
            yield from (alias.asname or alias.name for alias in stmt.names if alias.name != "*")
        elif isinstance(stmt, ast.If):
            yield from _bound_names(stmt.body)
            yield from _bound_names(stmt.orelse)
        elif isinstance(stmt, (ast.Try, ast.TryStar)):
            for block in (stmt.body, stmt.orelse, stmt.finalbody):
                yield from _bound_names(block)
            for handler in stmt.handlers:
                yield from _bound_names(handler.body)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            yield from _bound_names(stmt.body)


def _target_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _target_names(element)


def check_functions(compiled: CompiledWorkflow, available: set[str]) -> None:
    """Raise SpecError naming every function node that ``available`` lacks."""
    problems = []
    for node in compiled.functions:
        if node in available:
            continue
        attrs = compiled.graph.nodes[node]
        close = difflib.get_close_matches(node, sorted(available), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(Problem(attrs.get("line"), attrs.get("col"), node,
                                f"function '{node}' is not defined in the workflow's handler "
                                f"file{hint}"))
    if problems:
        raise SpecError(problems, source=compiled.source)
