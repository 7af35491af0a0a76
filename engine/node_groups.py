"""A workflow's nodes in shared workers.

Function nodes of one workflow whose worker settings are the same (batch size, batch delay,
minimum and maximum workers) form a group served by one pool of workers
(``handler/node_group.py`` on the worker's side): one Python process per worker for the
whole group instead of one per node. With ``workflow: share-workers: true`` the workflow's
own model nodes join them, when their settings, their archives' model config (none, to join
function nodes) and their own ``config.properties`` entries are the same and the modules
next to their handlers do not have the same names (one process cannot import two
``model.py`` files as ``model``).
Each node is still a model of its own,
``<workflow>__<node>``, as in TorchServe (listed, described, with its own metrics and
traces): the first node's model owns the group's workers and queue, and every node's model
reaches them through a :class:`NodeQueue` that names the node on each request.

``fusable`` says which nodes can run in the worker call of the node before them: the only
child of a node, whose only parent that node is, in the same group (see ``scheduler.py``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

from .messages import Request
from .registry import ModelStats, ModelVersion


def settings_key(settings: Any) -> tuple:
    """What a node's worker needs to be the same as another's to share it."""
    return (settings.batch_size, settings.max_batch_delay_ms, max(1, settings.min_workers),
            max(settings.max_workers, settings.min_workers, 1))


def node_groups(compiled: Any, nodes: list[str],
                own_config: Callable[[str], Any] = lambda node: None,
                model_key: Callable[[str], Any] | None = None,
                modules: Callable[[str], dict[str, tuple[Path, bool]]] = lambda node: {}
                ) -> list[list[str]]:
    """The nodes among ``nodes`` (in order) that share workers, grouped by their settings; a
    group of one node keeps a worker of its own, as before.

    ``own_config(node)``: what else sets up the node's model (its entry in config.properties'
    ``models``: batch size, workers, Ray placement), which must be the same too. Function
    nodes always group; model nodes only with ``model_key`` (``share-workers``), which says
    what else must be the same (the archive's model config: a function node's is empty), or
    None for a node that keeps its own workers; then function nodes and models group
    together. ``modules(node)``: the names a node's files would import under, each with its
    directory and whether it is the node's handler (``sibling_modules``): no node of the
    group may bring another file of the same name, unless both are handlers."""
    groups: dict[tuple, list[str]] = {}
    for node in nodes:
        kind = compiled.graph.nodes[node]["kind"]
        if kind == "function" and model_key is None:
            extra: Any = "function"
        elif kind in ("function", "model") and model_key is not None:
            extra = model_key(node)
            if extra is None:
                continue
        else:
            continue
        key = (settings_key(compiled.graph.nodes[node]["settings"]),
               json.dumps(own_config(node), sort_keys=True, default=str),
               json.dumps(extra, sort_keys=True, default=str))
        groups.setdefault(key, []).append(node)
    out: list[list[str]] = []
    for group in groups.values():
        out.extend(_apart_where_names_clash(group, modules))
    return [group for group in out if len(group) > 1]


def _apart_where_names_clash(group: list[str],
                             modules: Callable[[str], dict[str, tuple[Path, bool]]]
                             ) -> list[list[str]]:
    """``group`` split so that no two nodes of a part import different files under one
    name. The function nodes of a workflow share their directory: no clash. Two handlers
    of one name are none either: the worker loads each from its own directory
    (``handler/util.import_from_dir``); a handler and another model's helper of one name
    are."""
    parts: list[tuple[list[str], dict[str, tuple[Path, bool]]]] = []
    for node in group:
        names = modules(node)
        for members, taken in parts:
            if not any(name in taken and _clash(taken[name], mine)
                       for name, mine in names.items()):
                members.append(node)
                taken.update(names)
                break
        else:
            parts.append(([node], dict(names)))
    return [members for members, _ in parts]


def _clash(a: tuple[Path, bool], b: tuple[Path, bool]) -> bool:
    return a[0] != b[0] and not (a[1] and b[1])


def sibling_modules(model_dir: Path, handler_module: str) -> dict[str, tuple[Path, bool]]:
    """The names a model's own files import under, each with ``model_dir`` and whether it
    is the handler's module: Python files, compiled extensions and folders holding Python
    files (packages, and namespace packages, which Python would merge across two models'
    directories)."""
    names = {}
    try:
        for path in model_dir.iterdir():
            if path.suffix in (".py", ".so", ".pyd") and path.is_file():
                name = path.name.split(".")[0]
            elif path.is_dir() and any(path.glob("*.py")):
                name = path.name
            else:
                continue
            names[name] = (model_dir, name == handler_module)
    except OSError:
        pass
    return names


class NodeQueue:
    """One node's view of its group's queue: submitting names the node. Everything
    else (pending, capacity, histograms) is the group's."""

    __slots__ = ("shared", "node")

    def __init__(self, shared: Any, node: str):
        self.shared = shared
        self.node = node

    def submit(self, request: Request, probe: Any = None, nodes: str | None = None):
        """``nodes``: several nodes of the group run in this one call (``a,b,c``)."""
        request.nodes = nodes or self.node  # a request object is made for one submission
        return self.shared.submit(request, probe)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shared, name)


def group_member(first: ModelVersion, node: str, model_name: str, handler: str,
                 **own: Any) -> ModelVersion:
    """The model of another node of ``first``'s group: its own name, stats and queue view
    (and, for a model node, ``own`` files: url, model_dir, manifest, runtime, owns_dir);
    ``first``'s workers."""
    queue = first.queue.shared if isinstance(first.queue, NodeQueue) else first.queue
    return dataclasses.replace(first, name=model_name, handler=handler,
                               queue=NodeQueue(queue, node), stats=ModelStats(),
                               owns_workers=False, registered_at=time.time(), **own)


def fusable(compiled: Any, groups: list[list[str]]) -> set[str]:
    """Nodes that run in their parent's worker call (see the module docstring)."""
    group_of = {node: i for i, group in enumerate(groups) for node in group}
    out = set()
    for node, parents in compiled.parents.items():
        if len(parents) != 1 or node not in group_of:
            continue
        parent = next(iter(parents))
        if group_of.get(parent) == group_of[node] and len(compiled.children.get(parent, ())) == 1:
            out.add(node)
    return out
