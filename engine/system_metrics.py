"""TorchServe's system metrics in ``/metrics``: ``CPUUtilization``, ``MemoryUsed``,
``MemoryAvailable``, ``MemoryUtilization``, ``DiskUsage``, ``DiskUtilization``,
``DiskAvailable`` and, with CUDA, ``GPUMemoryUtilization``, ``GPUMemoryUsed``,
``GPUUtilization`` (gauges labelled ``{Level="Host", Hostname}``, GPU ones with
``DeviceId``), sampled every ``metric_time_interval`` seconds from /proc, the disk and
torch.cuda. ``disable_system_metrics=true`` turns them off; a ``metrics_config``
(metrics.yaml) chooses which of them are collected by listing them under
``ts_metrics: gauge:``. A prometheus_client collector of its own, registered beside the
server's."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml
from prometheus_client.metrics_core import GaugeMetricFamily

from .config import Config
from .errors import ConfigError
from .workers.pool import visible_gpu_count

log = logging.getLogger("dagserve.metrics")

HOST_METRICS = {  # name -> unit, as TorchServe's metrics.yaml has them
    "CPUUtilization": "Percent", "MemoryUsed": "Megabytes", "MemoryAvailable": "Megabytes",
    "MemoryUtilization": "Percent", "DiskUsage": "Gigabytes", "DiskUtilization": "Percent",
    "DiskAvailable": "Gigabytes"}
GPU_METRICS = {"GPUMemoryUtilization": "Percent", "GPUMemoryUsed": "Megabytes",
               "GPUUtilization": "Percent"}
ALL_METRICS = {**HOST_METRICS, **GPU_METRICS}
_MB, _GB = 1024 ** 2, 1024 ** 3


def read_metrics_config(path: Path) -> dict[str, Any]:
    """metrics.yaml, checked: a mapping whose ``ts_metrics`` / ``model_metrics`` sections
    map metric types to lists of ``{name, unit, dimensions}``."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"metrics_config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"metrics_config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"metrics_config {path} must be a mapping")
    for section in ("ts_metrics", "model_metrics"):
        types = data.get(section) or {}
        if not isinstance(types, dict):
            raise ConfigError(f"metrics_config {path}: {section} must map metric types "
                              f"(counter, gauge, histogram) to lists")
        for mtype, entries in types.items():
            if mtype not in ("counter", "gauge", "histogram") or not isinstance(entries, list) \
                    or not all(isinstance(e, dict) and "name" in e for e in entries):
                raise ConfigError(f"metrics_config {path}: {section}.{mtype} must be a list "
                                  f"of {{name, unit, dimensions}} under counter, gauge or "
                                  f"histogram")
    return data


def configured_names(metrics_config: dict[str, Any] | None) -> frozenset[str]:
    """System metrics to collect: all by default, else those the file lists as gauges."""
    if metrics_config is None:
        return frozenset(ALL_METRICS)
    gauges = ((metrics_config.get("ts_metrics") or {}).get("gauge")) or []
    return frozenset(e["name"] for e in gauges) & frozenset(ALL_METRICS)


@dataclass
class _CpuTimes:
    busy: int
    total: int


def _cpu_times() -> _CpuTimes | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return _CpuTimes(sum(values) - idle, sum(values))


def _meminfo() -> tuple[float, float] | None:
    """(total, available) bytes from /proc/meminfo."""
    found: dict[str, float] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                found[key] = float(rest.split()[0]) * 1024
    except OSError:
        return None
    if len(found) < 2:
        return None
    return found["MemTotal"], found["MemAvailable"]


def sample_host(previous: _CpuTimes | None, disk_path: Path) -> tuple[dict[str, float],
                                                                       _CpuTimes | None]:
    """One reading of the host metrics; CPU is the busy share since ``previous``."""
    values: dict[str, float] = {}
    now = _cpu_times()
    if now is not None and previous is not None and now.total > previous.total:
        values["CPUUtilization"] = round(
            100.0 * (now.busy - previous.busy) / (now.total - previous.total), 1)
    mem = _meminfo()
    if mem is not None:
        total, available = mem
        values["MemoryUsed"] = round((total - available) / _MB, 1)
        values["MemoryAvailable"] = round(available / _MB, 1)
        values["MemoryUtilization"] = round(100.0 * (total - available) / total, 1)
    try:
        disk = shutil.disk_usage(disk_path)
        values["DiskUsage"] = round(disk.used / _GB, 1)
        values["DiskAvailable"] = round(disk.free / _GB, 1)
        values["DiskUtilization"] = round(100.0 * disk.used / disk.total, 1)
    except OSError:
        pass
    return values, now


def sample_gpus() -> dict[int, dict[str, float]]:
    """Per CUDA device: memory used and its share, and utilization when NVML answers.
    torch is imported only where the driver shows a GPU (the frontend otherwise never
    imports it: that was 150 MiB and seconds of start-up on a CPU machine)."""
    if visible_gpu_count(None) == 0:
        return {}
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
        out: dict[int, dict[str, float]] = {}
        for idx in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(idx)
            row = {"GPUMemoryUsed": round((total - free) / _MB, 1),
                   "GPUMemoryUtilization": round(100.0 * (total - free) / total, 1)}
            try:
                row["GPUUtilization"] = float(torch.cuda.utilization(idx))
            except Exception:  # NVML (pynvml) missing: utilization is not known
                pass
            out[idx] = row
        return out
    except Exception as exc:  # a broken driver must not take /metrics down
        log.debug("GPU metrics unavailable: %s", exc)
        return {}


class SystemMetrics:
    """Samples the system metrics in the background and exports the latest reading."""

    def __init__(self, names: frozenset[str], interval_s: float, disk_path: Path,
                 hostname: str | None = None):
        self.names = names
        self.interval_s = max(1.0, float(interval_s))
        self.disk_path = disk_path
        self.hostname = hostname or socket.gethostname()
        self.host: dict[str, float] = {}
        self.gpus: dict[int, dict[str, float]] = {}
        self._cpu: _CpuTimes | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> "SystemMetrics":
        names = frozenset() if cfg.disable_system_metrics else configured_names(
            read_metrics_config(cfg.metrics_config) if cfg.metrics_config else None)
        return cls(names, cfg.metric_time_interval, cfg.workdir)

    def register(self, prometheus: Any) -> None:
        """Export through ``prometheus`` (a prometheus_client CollectorRegistry)."""
        if self.names:
            prometheus.register(self)

    def sample(self) -> None:
        self.host, self._cpu = sample_host(self._cpu, self.disk_path)
        if self.names & GPU_METRICS.keys():
            self.gpus = sample_gpus()

    async def run(self) -> None:
        """Sample now (CPU needs two readings: the next comes a second later), then every
        ``metric_time_interval``; runs in the runtime's task group until it stops."""
        self.sample()
        await asyncio.sleep(min(1.0, self.interval_s))
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def describe(self) -> list:
        return []  # names are only known after sampling; skip registry auto-describe

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, unit in HOST_METRICS.items():
            if name in self.names and name in self.host:
                fam = GaugeMetricFamily(name, f"Torchserve prometheus gauge metric with unit: "
                                              f"{unit}", labels=["Level", "Hostname"])
                fam.add_metric(["Host", self.hostname], self.host[name])
                yield fam
        for name, unit in GPU_METRICS.items():
            rows = [(idx, row[name]) for idx, row in sorted(self.gpus.items()) if name in row]
            if name in self.names and rows:
                fam = GaugeMetricFamily(name, f"Torchserve prometheus gauge metric with unit: "
                                              f"{unit}", labels=["Level", "DeviceId",
                                                                 "Hostname"])
                for idx, value in rows:
                    fam.add_metric(["Host", str(idx), self.hostname], value)
                yield fam
