"""The fault suite's shared pieces: a real server per module, the "nothing lost, nothing
leaked" checks every fault test ends with, and the figures docs/reliability.md reports.

Set ``DAGSERVE_FAULT_REPORT=<file>`` to have every test append one JSON line with its figures
(requests sent, failures, seconds to recover); ``python -m tests.faults.report <file>``
prints them as the table of docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server_utils import descendants, pid_alive, wait_until  # noqa: E402

REQUEST_TIMEOUT = 30  # every request a fault test sends must be answered within this


@dataclass
class Figures:
    name: str
    requests: int = 0
    failures: int = 0  # answered with a 5xx, or not answered
    unanswered: int = 0
    recover_s: float | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)


@pytest.fixture
def figures(request):
    """A test's figures, written to ``DAGSERVE_FAULT_REPORT`` (if set) when it passes."""
    fig = Figures(request.node.name)
    yield fig
    path = os.environ.get("DAGSERVE_FAULT_REPORT")
    if path:
        row = {"test": f"{Path(request.node.fspath).name}::{fig.name}",
               "requests": fig.requests, "failures": fig.failures,
               "unanswered": fig.unanswered, "recover_s": fig.recover_s, "notes": fig.notes}
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def post_many(url: str, bodies: list[bytes], *, threads: int = 8,
              timeout: float = REQUEST_TIMEOUT, answered: list | None = None) -> list[int | str]:
    """POST each body concurrently; the status of each, or the exception's class name when
    it was not answered within ``timeout``. ``answered`` (if given) gets each status as it
    comes, for a test that acts in the middle of the load; the result is then empty."""
    def one(body: bytes) -> int | str:
        try:
            status: int | str = requests.post(url, data=body, timeout=timeout).status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        if answered is not None:
            answered.append(status)
        return status

    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(one, bodies))
    return [] if answered is not None else statuses


def count(statuses: list[int | str], figures: Figures) -> None:
    figures.requests += len(statuses)
    figures.unanswered += sum(1 for s in statuses if not isinstance(s, int))
    figures.failures += sum(1 for s in statuses if not isinstance(s, int) or s >= 500)


def recover(predicate, timeout: float = 30.0) -> float:
    """Seconds until ``predicate`` holds (fails the test past ``timeout``)."""
    start = time.monotonic()
    assert wait_until(predicate, timeout, 0.1), "did not recover in time"
    return round(time.monotonic() - start, 2)


def assert_no_processes_left(server_pid: int, known: list[int]) -> None:
    """After a server stopped: none of the processes it had started is alive."""
    assert wait_until(lambda: not [p for p in known if pid_alive(p)], 15.0), \
        f"processes left behind: {[p for p in known if pid_alive(p)]}"
    assert not descendants(server_pid)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")}
