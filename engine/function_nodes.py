"""A workflow's function nodes in shared workers.

Function nodes of one workflow whose worker settings are the same (batch size, batch delay,
minimum and maximum workers) form a group served by one pool of workers
(``handler/function_group.py`` on the worker's side): one Python process per worker for the
whole group instead of one per node. Each node is still a model of its own,
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
from typing import Any, Callable

from .messages import Request
from .registry import ModelStats, ModelVersion


def settings_key(settings: Any) -> tuple:
    """What a node's worker needs to be the same as another's to share it."""
    return (settings.batch_size, settings.max_batch_delay_ms, max(1, settings.min_workers),
            max(settings.max_workers, settings.min_workers, 1))


def function_groups(compiled: Any, nodes: list[str],
                    own_config: Callable[[str], Any] = lambda node: None) -> list[list[str]]:
    """The function nodes among ``nodes`` (in order) grouped by their settings; a group of
    one node keeps a worker of its own, as before. ``own_config(node)``: what else sets up
    the node's model (its entry in config.properties' ``models``: batch size, workers, Ray
    placement), which must be the same too."""
    groups: dict[tuple, list[str]] = {}
    for node in nodes:
        if compiled.graph.nodes[node]["kind"] == "function":
            key = (settings_key(compiled.graph.nodes[node]["settings"]),
                   json.dumps(own_config(node), sort_keys=True, default=str))
            groups.setdefault(key, []).append(node)
    return [group for group in groups.values() if len(group) > 1]


class NodeQueue:
    """One function node's view of its group's queue: submitting names the node. Everything
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


def group_member(first: ModelVersion, node: str, model_name: str, handler: str) -> ModelVersion:
    """The model of another node of ``first``'s group: its own name, stats and queue view;
    ``first``'s workers."""
    queue = first.queue.shared if isinstance(first.queue, NodeQueue) else first.queue
    return dataclasses.replace(first, name=model_name, handler=handler,
                               queue=NodeQueue(queue, node), stats=ModelStats(),
                               owns_workers=False, registered_at=time.time())


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
