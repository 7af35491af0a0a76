"""A fused call's trail turned into each node's metrics and trace.

Function nodes that share a worker and follow each other in a chain run in one worker call
(``function_nodes.py``, ``handler/function_group.py``). The worker answers with a trail,
``[node, code, seconds, bytes out]`` for every node that ran, so each node still counts its
own call (status and time) and, in a traced request, gets its own attempt, as if the
frontend had called it: the first node's time is the call's, less what the others took.
"""

from __future__ import annotations

import time
from typing import Any

from . import tracing
from .messages import Response


def outcome_of(resp: Response) -> str:
    """A failed answer's outcome in a trace: a node the worker stopped at its own time limit
    (``handler/function_group.py``) timed out; anything else is the node's error."""
    return "timeout" if resp.code == 504 and resp.message.startswith("timed out") else "error"


def account_fused(resp: Response, head: Any, head_target: Any, fused: tuple,
                  targets: dict | None, elapsed_s: float, probe: Any) -> None:
    """Record what ``resp.trail`` says (``head`` ran first, then ``fused`` in order)."""
    trail = resp.trail or []
    others = sum(step[2] for step in trail[1:])
    first = trail[0]
    head_target.stats.count(first[1], max(0.0, elapsed_s - others))
    if probe is not None:
        probe.finish("ok", first[1], "", first[3], first[2])
    trace = tracing.current.get()
    now = time.perf_counter()
    start = now - others
    previous_out = first[3]
    for node, step in zip(fused, trail[1:]):
        name, code, seconds, bytes_out = step
        target = targets[node.name] if targets else None
        if target is not None:
            target.stats.count(code, seconds)
        if trace is not None:
            attempt = trace.attempt(node.name, target, 1, (), getattr(probe, "item", None))
            attempt.bytes_in = previous_out
            if probe is not None and probe.batch_size is not None:
                attempt.dispatched(0.0, probe.batch_size, probe.worker_id)
            failed = code >= 400
            attempt.finish((outcome_of(resp) if failed else "ok"), code,
                           (resp.message if failed else ""), 0 if failed else bytes_out,
                           seconds)
            attempt.started, attempt.ended = start, start + seconds
        start += seconds
        previous_out = bytes_out
