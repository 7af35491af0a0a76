"""The scheduler's own cost per node, in process, without HTTP or worker processes: the same
request run many times through the fast path (``scheduler.run_plan``) and the general one
(``flow.run_flow``) over targets that answer at once. Far steadier than the HTTP scenarios
on a loaded machine, since only the scheduler's own work is timed.

    .venv/bin/python -m benchmarks.flow_micro [--requests 20000]

Prints p50 per request for: 5 echo nodes (fast path); the same with ``when`` on nodes 2-5
(general path); that plus a branch whose ``when`` is false; and ``foreach`` over 32 items.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from dagserve.engine.flow import FlowPlan, run_flow
from dagserve.engine.messages import Param, Request, Response
from dagserve.engine.registry import ModelStats
from dagserve.engine.scheduler import Plan, run_plan
from dagserve.workflows import load_spec

from .flow_scenarios import FOREACH_BODY, when_spec

PAYLOAD = b'{"text": "dagserve benchmark payload", "n": 42}'


class _Pool:
    def check_can_serve(self) -> None:
        pass


class _EchoQueue:
    """Answers every job with its own body, resolved before the caller awaits it."""

    capacity = 1000

    def submit(self, request: Request) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(Response(request.id, 200, request.params[0].value))
        return fut


class _Target:
    def __init__(self) -> None:
        self.queue, self.pool, self.stats = _EchoQueue(), _Pool(), ModelStats()


def _timed(fn, requests: int) -> float:
    """p50 in microseconds of ``requests`` sequential runs of ``fn()`` (a coroutine)."""

    async def main() -> list[float]:
        out = []
        for _ in range(requests // 10):  # warm up
            await fn()
        for _ in range(requests):
            t0 = time.perf_counter()
            await fn()
            out.append(time.perf_counter() - t0)
        return out

    return statistics.median(asyncio.run(main())) * 1e6


def measure(requests: int) -> dict[str, float]:
    foreach = load_spec("models: {}\ndag:\n  first: [each]\nnodes:\n"
                        "  each: {foreach: items, max-items: 32}\n")
    specs = {
        "plain": load_spec(when_spec("echo.mar", conditions=False, skipped_branch=False)),
        "when": load_spec(when_spec("echo.mar", conditions=True, skipped_branch=False)),
        "when_skip": load_spec(when_spec("echo.mar", conditions=True, skipped_branch=True)),
        "foreach32": foreach,
    }
    out = {}
    for name, compiled in specs.items():
        plan = Plan.from_compiled(compiled)
        flow = FlowPlan.from_compiled(compiled, plan)
        targets = {node: _Target() for node in compiled.topo_order}
        body = FOREACH_BODY if name == "foreach32" else PAYLOAD
        request = Request("bench", [Param("body", "application/json", body)], {})
        if compiled.uses_flow:
            out[name] = _timed(lambda: run_flow(flow, targets, request), requests)
        else:
            out[name] = _timed(lambda: run_plan(plan, targets, request), requests)
            out[name + "_general_path"] = _timed(lambda: run_flow(flow, targets, request),
                                                 requests)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args(argv)
    result = measure(args.requests)
    for name, us in result.items():
        print(f"{name:26s} p50 {us:8.1f} us per request")
    print(f"when: {(result['when'] - result['plain']) / 4:+.1f} us per node (vs the fast "
          f"path), {(result['when'] - result['plain_general_path']) / 4:+.1f} us per node (vs "
          f"the general path without when); skipped branch: "
          f"{result['when_skip'] - result['when']:+.1f} us")
    print(json.dumps({k: round(v, 1) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
