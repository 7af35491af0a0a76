"""A fused call's trail turned into each node's metrics and trace.

Nodes that share a worker and follow each other in a chain run in one worker call
(``node_groups.py``, ``handler/node_group.py``). The worker answers with a trail,
``code, microseconds, bytes out`` for every node that ran (a flat list), so each node still
counts its own call (status and time) and, in a traced request, gets its own attempt, as if the
frontend had called it: the first node's time is the call's, less what the others took.
"""

from __future__ import annotations

import time
from typing import Any

from .messages import Response


def outcome_of(resp: Response) -> str:
    """A failed answer's outcome in a trace: a node the worker stopped at its own time limit
    (``handler/node_group.py``) timed out; anything else is the node's error."""
    return "timeout" if resp.code == 504 and resp.message.startswith("timed out") else "error"


def account_fused(resp: Response, head_target: Any, fused: tuple, targets: dict | None,
                  elapsed_s: float, probe: Any, trace: Any) -> None:
    """Record what ``resp.trail`` (code, microseconds, bytes out per node) says: the call's
    first node ran, then ``fused`` in order, as far as the trail goes."""
    trail = resp.trail or ()
    others = sum(trail[4::3]) / 1e6
    head_target.stats.count(trail[0], max(0.0, elapsed_s - others))
    if targets is not None:
        for node, code, micros in zip(fused, trail[3::3], trail[4::3]):
            targets[node.name].stats.count(code, micros / 1e6)
    if trace is None:
        return
    if probe is not None:
        probe.finish("ok", trail[0], "", trail[2], trail[1] / 1e6)
    start = time.perf_counter() - others
    previous_out = trail[2]
    for index, node in enumerate(fused[:len(trail) // 3 - 1], 1):
        code, micros, bytes_out = trail[3 * index:3 * index + 3]
        seconds = micros / 1e6
        target = targets[node.name] if targets else None
        attempt = trace.attempt(node.name, target, 1, (), getattr(probe, "item", None))
        attempt.bytes_in = previous_out
        if probe is not None and probe.batch_size is not None:
            attempt.dispatched(0.0, probe.batch_size, probe.worker_id)
        failed = code >= 400
        attempt.finish((outcome_of(resp) if failed else "ok"), code,
                       (resp.message if failed else ""), 0 if failed else bytes_out, seconds)
        attempt.started, attempt.ended = start, start + seconds
        start += seconds
        previous_out = bytes_out
