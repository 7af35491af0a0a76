"""Prometheus metrics, read at scrape time from plain counters.

Nothing here runs on a request's path except two cheap updates: the status counters
(``StatusCounter.record``, a few integer additions per response) and the aggregation of the
metrics a handler sent with its batch (``record_handler_metrics``, a dict update per metric).
Everything else (``ts_inference_requests_total`` ... from ``ModelVersion.stats`` and
``BatchQueue``) is turned into metric families only when ``/metrics`` is scraped.

Names and labels are TorchServe's (metrics_mode=prometheus):

- ``Requests2XX`` / ``Requests4XX`` / ``Requests5XX`` counters ``{Level="Host", Hostname}``:
  every HTTP response of every API, as TorchServe's frontend counts them;
- ``ts_inference_requests_total``, ``ts_inference_latency_microseconds``,
  ``ts_queue_latency_microseconds`` counters ``{model_name, model_version, hostname}``;
- the handlers' metrics (``HandlerTime``, ``PredictionTime``, custom ones) with their own
  dimensions plus ``Hostname``: counters export their sum, gauges their last value,
  histograms a ``_sum`` / ``_count`` summary.

dagserve adds ``dagserve_model_workers{model_name, model_version, status}`` and
``dagserve_queue_pending{model_name, model_version}`` gauges, and the histograms and
outcome counters of ``metrics_families.py``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any, Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .metrics_families import model_families, workflow_families
from .registry import ModelVersion, Registry
from .tasks import TaskHandle, TaskOwner

logger = logging.getLogger("dagserve.metrics")

# Per model version, at most this many distinct handler metric series are kept (a handler
# that puts a request id in a dimension must not grow the server without bound).
MAX_HANDLER_SERIES = 1000

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")
_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "summary"}

BUILTIN_NAMES = frozenset({
    "Requests2XX", "Requests4XX", "Requests5XX", "ts_inference_requests_total",
    "ts_inference_latency_microseconds", "ts_queue_latency_microseconds",
    "dagserve_model_workers", "dagserve_queue_pending", "dagserve_request_duration_seconds",
    "dagserve_queue_wait_seconds", "dagserve_batch_size", "dagserve_calls_total",
    "dagserve_workflow_requests_total", "dagserve_workflow_request_duration_seconds"})


def metric_name(name: str) -> str:
    """A valid Prometheus metric name for what a handler called its metric."""
    clean = _NAME_BAD.sub("_", name) or "_"
    return "_" + clean if clean[0].isdigit() else clean


def label_name(name: str) -> str:
    """A valid Prometheus label name (``__`` prefixes are reserved by Prometheus)."""
    clean = _LABEL_BAD.sub("_", name)
    if clean.startswith("__"):
        clean = clean.lstrip("_")
    if not clean or clean[0].isdigit():
        clean = "_" + clean
    return clean


class StatusCounter:
    """An access recorder that counts responses by class (TorchServe's Requests2XX/4XX/5XX:
    200-299, 400-499, everything else) and passes the record on to the real access log."""

    __slots__ = ("counts", "_inner")

    def __init__(self, inner: Any = None):
        self.counts = [0, 0, 0]
        self._inner = inner

    def record(self, remote: str | None, method: str, path: str, status: int,
               duration_ms: float) -> None:
        if 200 <= status < 300:
            self.counts[0] += 1
        elif 400 <= status < 500:
            self.counts[1] += 1
        else:
            self.counts[2] += 1
        if self._inner is not None:
            self._inner.record(remote, method, path, status, duration_ms)

    def __getattr__(self, name: str) -> Any:  # start(), close() ... of the wrapped recorder
        inner = object.__getattribute__(self, "_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


class MetricsCollector(Collector):
    """A prometheus_client Collector over the server's registry, registered in a private
    ``CollectorRegistry`` (``self.prometheus``), never the global one."""

    def __init__(self, registry: Registry, hostname: str | None = None, log: Any = None):
        self.registry = registry
        self.hostname = hostname or socket.gethostname()
        self.log = log  # logs.MetricsLog: model_metrics.log and ts_metrics.log, or None
        self._log_timer: TaskHandle | None = None
        self.status = StatusCounter()
        self._dropped_warned: set[tuple[str, str]] = set()
        self.prometheus = CollectorRegistry(auto_describe=False)
        self.prometheus.register(self)

    # -- fed by the server -------------------------------------------------------------

    def counting(self, access: Any) -> StatusCounter:
        """Wrap the access recorder given to the common middleware so that every response
        is also counted (``Requests2XX`` ...)."""
        self.status = StatusCounter(access)
        return self.status

    def record_handler_metrics(self, mv: ModelVersion, metrics: list[dict]) -> None:
        """Fold what a handler sent with a batch (``{"name", "value", "unit", "type",
        "dims"}``) into ``mv.stats.handler_metrics``: key (name, type, unit, dims) ->
        [sum, count, last]."""
        store = mv.stats.handler_metrics
        log = self.log
        for item in metrics:
            try:
                dims = item.get("dims") or {}
                key = (item["name"], item.get("type") or "gauge", item.get("unit") or "",
                       tuple(dims.items()))
                value = float(item["value"])
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # a malformed entry: nothing sensible to export
            if log is not None:
                log.record_model(key[0], key[2] or "Count", value, dims, self.hostname)
            entry = store.get(key)
            if entry is not None:
                entry[0] += value
                entry[1] += 1
                entry[2] = value
            elif len(store) < MAX_HANDLER_SERIES:
                store[key] = [value, 1, value]
            elif (mv.name, mv.version) not in self._dropped_warned:
                self._dropped_warned.add((mv.name, mv.version))
                logger.warning("model %s version %s sends more than %d distinct metric series; "
                            "further ones are not exported", mv.name, mv.version,
                            MAX_HANDLER_SERIES)

    # -- ts_metrics.log -----------------------------------------------------------------

    def start_server_log(self, tasks: TaskOwner, interval_s: float = 60.0) -> None:
        """Write the server's figures to ts_metrics.log now and every ``interval_s``."""
        if self.log is not None and self._log_timer is None:
            self._log_timer = tasks.spawn(self._server_log_loop, interval_s,
                                          name="writing ts_metrics.log")

    async def _server_log_loop(self, interval_s: float) -> None:
        while True:
            self.write_server_metrics()
            await asyncio.sleep(interval_s)

    def write_server_metrics(self) -> None:
        host, record = self.hostname, self.log.record_server
        for name, count in zip(("Requests2XX", "Requests4XX", "Requests5XX"),
                               self.status.counts):
            record(name, "Count", count, {"Level": "Host"}, host)
        memory = _meminfo()
        if memory:
            total, available = memory
            record("MemoryUsed", "Megabytes", (total - available) / 1024, {"Level": "Host"}, host)
            record("MemoryAvailable", "Megabytes", available / 1024, {"Level": "Host"}, host)
            record("MemoryUtilization", "Percent", 100 * (total - available) / total,
                   {"Level": "Host"}, host)
        for mv in self.registry.all_versions():
            record("WorkerCount", "Count", sum(1 for w in mv.pool.workers if w.alive),
                   {"ModelName": mv.name, "Level": "Model"}, host)

    def stop_server_log(self) -> None:
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None

    # -- scrape time -------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        host = self.hostname
        counts = self.status.counts
        for i, name in enumerate(("Requests2XX", "Requests4XX", "Requests5XX")):
            fam = Metric(name, "Torchserve prometheus counter metric with unit: Count",
                         "counter")
            fam.add_sample(name, {"Level": "Host", "Hostname": host}, counts[i])
            yield fam

        versions = self.registry.all_versions()
        yield from self._model_counters(versions, host)
        yield from self._model_gauges(versions)
        workflows = self.registry.all_workflow_versions()
        yield from model_families(versions, workflows)
        yield from workflow_families(workflows)
        yield from self._handler_families(versions, host)

    def _model_counters(self, versions: list[ModelVersion], host: str) -> Iterator[Metric]:
        specs = (("ts_inference_requests_total", "Count", lambda mv: mv.stats.requests),
                 ("ts_inference_latency_microseconds", "Microseconds",
                  lambda mv: mv.stats.latency_us),
                 ("ts_queue_latency_microseconds", "Microseconds",
                  lambda mv: mv.queue.queue_latency_s * 1e6))
        for name, unit, value in specs:
            fam = Metric(name, f"Torchserve prometheus counter metric with unit: {unit}",
                         "counter")
            for mv in versions:
                fam.add_sample(name, {"model_name": mv.name, "model_version": mv.version,
                                      "hostname": host}, value(mv))
            yield fam

    def _model_gauges(self, versions: list[ModelVersion]) -> Iterator[Metric]:
        workers = Metric("dagserve_model_workers",
                         "Worker processes of each model version by status", "gauge")
        pending = Metric("dagserve_queue_pending",
                         "Requests waiting in each model version's queue", "gauge")
        for mv in versions:
            labels = {"model_name": mv.name, "model_version": mv.version}
            by_status: dict[str, int] = {"READY": 0}
            for w in mv.pool.workers:
                if w.alive:
                    by_status[w.status] = by_status.get(w.status, 0) + 1
            for status, n in by_status.items():
                workers.add_sample("dagserve_model_workers", {**labels, "status": status}, n)
            pending.add_sample("dagserve_queue_pending", labels, mv.queue.pending)
        yield workers
        yield pending

    def _handler_families(self, versions: Iterable[ModelVersion],
                          host: str) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for mv in versions:
            for (name, mtype, unit, dims), (total, count, last) in \
                    list(mv.stats.handler_metrics.items()):
                pname = metric_name(name)
                if pname in BUILTIN_NAMES:
                    continue
                fam = families.get(pname)
                if fam is None:
                    ptype = _TYPES.get(mtype, "gauge")
                    fam = Metric(pname, f"Torchserve prometheus {mtype} metric with unit: "
                                        f"{unit}", ptype)
                    families[pname] = fam
                labels = {label_name(k): str(v) for k, v in dims}
                labels.setdefault("Hostname", host)
                if fam.type == "counter":
                    fam.add_sample(pname, labels, total)
                elif fam.type == "summary":
                    fam.add_sample(pname + "_sum", labels, total)
                    fam.add_sample(pname + "_count", labels, count)
                else:
                    fam.add_sample(pname, labels, last)
        yield from families.values()


def _meminfo() -> tuple[float, float] | None:
    """(MemTotal, MemAvailable) in KiB from /proc/meminfo; None where there is none."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/meminfo") if ":" in line)
        return (float(fields["MemTotal"].split()[0]), float(fields["MemAvailable"].split()[0]))
    except (OSError, KeyError, ValueError):
        return None
