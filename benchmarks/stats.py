"""What one load run measured, and the percentile arithmetic behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of already sorted values; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n*q/100), at least 1
    return float(sorted_values[int(rank) - 1])


@dataclass
class LoadResult:
    """One load run against one URL: counts, latency percentiles (ms) and the client's cost.

    ``requests`` counts every request completed in the measured window, failed or not;
    ``errors`` those that got a non-2xx status or lost their connection (``error_kinds``
    says which). ``client_cpu_s`` is the CPU the load client burnt: near ``elapsed_s`` x 100 %
    of one core means the client, not the server, set the pace."""

    client: str
    connections: int
    requests: int
    errors: int
    elapsed_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    client_cpu_s: float
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        """Completed requests per second in the measured window (failed ones included)."""
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok_rps(self) -> float:
        """Successful requests per second."""
        return (self.requests - self.errors) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def client_cpu_pct(self) -> float:
        """The client's CPU time as a percentage of one core over the run."""
        return 100.0 * self.client_cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict:
        """Plain data for results.json."""
        return {
            "client": self.client, "connections": self.connections, "requests": self.requests,
            "errors": self.errors, "error_kinds": dict(self.error_kinds),
            "elapsed_s": round(self.elapsed_s, 4), "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 4), "p90_ms": round(self.p90_ms, 4),
            "p99_ms": round(self.p99_ms, 4), "mean_ms": round(self.mean_ms, 4),
            "max_ms": round(self.max_ms, 4), "client_cpu_pct": round(self.client_cpu_pct, 1),
        }


def summarize_latencies(client: str, connections: int, latencies_ns: list[int], errors: int,
                        error_kinds: dict[str, int], elapsed_s: float,
                        client_cpu_s: float, unanswered: int = 0) -> LoadResult:
    """A LoadResult from raw per-request latencies (nanoseconds) of the answered requests.

    ``unanswered`` requests (connection lost, timed out) count as requests and as errors
    (``errors`` must already include them) but have no latency."""
    values = sorted(latencies_ns)
    to_ms = 1e-6
    mean = (sum(values) / len(values) * to_ms) if values else 0.0
    return LoadResult(
        client=client, connections=connections, requests=len(values) + unanswered, errors=errors,
        elapsed_s=elapsed_s,
        p50_ms=percentile(values, 50) * to_ms, p90_ms=percentile(values, 90) * to_ms,
        p99_ms=percentile(values, 99) * to_ms, mean_ms=mean,
        max_ms=(values[-1] * to_ms) if values else 0.0,
        client_cpu_s=client_cpu_s, error_kinds=dict(error_kinds))
