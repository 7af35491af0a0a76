"""A fixed-bucket histogram cheap enough for the request path, and per-workflow figures.

``observe`` is one bisect and two additions (no lock: the event loop is the only writer);
buckets are turned into Prometheus' cumulative ``le`` series only at scrape time. The
hottest paths (every model call, every queued job) skip even the method call: they add to
``counts[bisect_left(bounds, value)]`` themselves and take the sum from a total they keep
anyway (``ModelStats.latency_us``, ``BatchQueue.queue_latency_s``). The dashboard
estimates a median from the same buckets (:func:`quantile`).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

# seconds: from half a millisecond (a function node) to ten seconds (a slow model)
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    """Counts per bucket (``counts[i]``: values <= ``bounds[i]`` and above the bound before
    it; the last one: above every bound), and their sum when fed through :meth:`observe`."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_S):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus writes them, ending with ``+Inf``."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of per-bucket ``counts`` (not cumulative), interpolated linearly
    inside its bucket as Prometheus' ``histogram_quantile`` does; None when empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if seen + n >= rank and n > 0:
            if i >= len(bounds):
                return float(bounds[-1])  # in +Inf: the highest finite bound
            low = 0.0 if i == 0 else float(bounds[i - 1])
            return low + (float(bounds[i]) - low) * (rank - seen) / n
        seen += n
    return float(bounds[-1])


class WorkflowStats:
    """Requests of one workflow by HTTP status, and their latency."""

    __slots__ = ("by_status", "latency")

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        self.latency = Histogram()

    def count(self, status: int, latency_s: float) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.latency.observe(latency_s)
