"""dagserve's own Prometheus families: histograms and outcome counters per model version
(and so per workflow node: each node is served by a model version of its own), and per
workflow. Built at scrape time from the plain counters and :class:`~.histogram.Histogram`
objects the request path updates; nothing here runs per request.

Names follow Prometheus conventions (base units, ``_seconds``, ``_total`` on counters):

- ``dagserve_request_duration_seconds`` histogram: one call of a model version, from
  submission to its answer (queue wait included);
- ``dagserve_queue_wait_seconds`` histogram: time a request waited in the model's queue;
- ``dagserve_batch_size`` histogram: requests per batch sent to a worker;
- ``dagserve_calls_total`` counter, label ``outcome``: ok, 4xx, 5xx, timeout (504), skipped
  (a workflow node that did not run), retried (an attempt after the first);
- ``dagserve_workflow_requests_total`` counter, labels ``workflow``, ``workflow_version``,
  ``status`` (the HTTP status);
- ``dagserve_workflow_request_duration_seconds`` histogram, labels ``workflow``,
  ``workflow_version``.

Model families carry ``model_name``, ``model_version``, ``workflow`` and ``node`` (both
empty for a model served on its own).
"""

from __future__ import annotations

from typing import Iterable, Iterator

from prometheus_client.metrics_core import Metric

from .histogram import Histogram


def _add_histogram(fam: Metric, labels: dict[str, str], hist: Histogram,
                   total: float | None = None) -> None:
    """``total``: the sum of the observed values when it is kept outside ``hist``."""
    for le, count in hist.cumulative():
        fam.add_sample(fam.name + "_bucket", {**labels, "le": le}, count)
    fam.add_sample(fam.name + "_sum", labels, hist.sum if total is None else total)
    fam.add_sample(fam.name + "_count", labels, sum(hist.counts))


def model_labels(mv, node_of: dict[int, tuple[str, str]]) -> dict[str, str]:
    workflow, node = node_of.get(id(mv), ("", ""))
    return {"model_name": mv.name, "model_version": mv.version, "workflow": workflow,
            "node": node}


def node_index(workflows: Iterable) -> dict[int, tuple[str, str]]:
    """id(model version) -> (workflow, node) for every node model a workflow owns (a shared
    model keeps its own name: several workflows may use it)."""
    return {id(mv): (entry.name, node) for entry in workflows
            for node, mv in entry.node_models.items()}


def outcome_counts(stats) -> dict[str, float]:
    return {"ok": stats.status_2xx, "4xx": stats.status_4xx,
            "5xx": stats.status_5xx - stats.timeouts, "timeout": stats.timeouts,
            "skipped": stats.skipped, "retried": stats.retried}


def model_families(versions: list, workflows: Iterable) -> Iterator[Metric]:
    node_of = node_index(workflows)
    latency = Metric("dagserve_request_duration_seconds",
                     "Time of one call of a model version (a workflow node), queue wait "
                     "included", "histogram")
    wait = Metric("dagserve_queue_wait_seconds",
                  "Time a request waited in its model version's queue", "histogram")
    batch = Metric("dagserve_batch_size", "Requests per batch sent to a worker", "histogram")
    calls = Metric("dagserve_calls_total",
                   "Calls of a model version (a workflow node) by outcome: ok, 4xx, 5xx, "
                   "timeout, skipped, retried", "counter")
    for mv in versions:
        labels = model_labels(mv, node_of)
        _add_histogram(latency, labels, mv.stats.latency, mv.stats.latency_us / 1e6)
        if mv.owns_workers:  # function nodes sharing a worker: reported by the group's first
            _add_histogram(wait, labels, mv.queue.queue_wait, mv.queue.queue_latency_s)
            _add_histogram(batch, labels, mv.queue.batch_sizes)
        for outcome, n in outcome_counts(mv.stats).items():
            calls.add_sample("dagserve_calls_total", {**labels, "outcome": outcome}, n)
    yield from (latency, wait, batch, calls)


def workflow_families(workflows: Iterable) -> Iterator[Metric]:
    requests = Metric("dagserve_workflow_requests_total",
                      "Requests of a workflow by HTTP status", "counter")
    latency = Metric("dagserve_workflow_request_duration_seconds",
                     "Time of one workflow request, all nodes included", "histogram")
    for entry in workflows:
        stats = entry.stats
        labels = {"workflow": entry.name, "workflow_version": entry.version}
        for status, n in sorted(stats.by_status.items()):
            requests.add_sample("dagserve_workflow_requests_total",
                                {**labels, "status": str(status)}, n)
        _add_histogram(latency, labels, stats.latency)
    yield from (requests, latency)
