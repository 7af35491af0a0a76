"""Custom metrics a handler records through ``context.metrics``.

The API is TorchServe's metrics cache (``add_time``, ``add_counter``, ``add_size``,
``add_percent``, ``add_metric``, ``add_metric_to_cache`` / ``get_metric`` returning a metric
with ``add_or_update``). Instead of logging ``[METRICS]`` lines, every update is kept as a
plain dict ``{"name", "value", "unit", "type", "dims"}`` until the worker drains them into the
batch's result frame; the frontend exports them. Each entry carries the dimensions
``ModelName`` and ``Level`` (``"Model"``) unless the handler gave them.

This module is also ``ts.metrics.dimension``, ``ts.metrics.metric_type_enum``,
``ts.metrics.metric_cache_errors`` and ``ts.handler_utils.timer`` for handlers written
against TorchServe.
"""

from __future__ import annotations

import enum
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .util import as_number

__all__ = ["Dimension", "Metric", "MetricTypes", "MetricsCache", "MetricsCacheKeyError",
           "MetricsCacheTypeError", "MetricsCacheValueError", "timed"]

TIME_UNITS = ("ms", "s")
SIZE_UNITS = ("MB", "kB", "GB", "B")


class MetricTypes(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class Dimension:
    """One label of a metric."""

    name: str
    value: str

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def to_dict(self) -> dict[str, str]:
        return {self.name: self.value}


class MetricsCacheKeyError(KeyError):
    """``get_metric`` of a metric that was never added."""


class MetricsCacheValueError(ValueError):
    """A metric value, unit or dimension that is not valid."""


class MetricsCacheTypeError(TypeError):
    """A metric argument of the wrong type."""


Dims = Iterable[Dimension] | dict[str, Any] | None


def _dims_dict(dimensions: Dims) -> dict[str, str]:
    if not dimensions:
        return {}
    if isinstance(dimensions, dict):
        return {str(k): str(v) for k, v in dimensions.items()}
    out = {}
    for dim in dimensions:
        if not isinstance(dim, Dimension):
            raise MetricsCacheTypeError(f"dimensions must be Dimension objects or a dict, "
                                        f"got {dim!r}")
        out[dim.name] = str(dim.value)
    return out


def _metric_type(metric_type: MetricTypes | str) -> str:
    if isinstance(metric_type, MetricTypes):
        return metric_type.value
    try:
        return MetricTypes(str(metric_type).lower()).value
    except ValueError:
        raise MetricsCacheValueError(f"metric type must be one of counter, gauge, histogram; "
                                     f"got {metric_type!r}") from None


class Metric:
    """A metric declared with fixed dimension names (``add_metric_to_cache``)."""

    def __init__(self, cache: "MetricsCache", name: str, unit: str,
                 dimension_names: list[str], metric_type: str) -> None:
        self._cache = cache
        self.metric_name = name
        self.unit = unit
        self.dimension_names = list(dimension_names)
        self.metric_type = MetricTypes(metric_type)

    def add_or_update(self, value: float, dimension_values: list | None = None,
                      request_id: str = "") -> None:
        """Record ``value`` with one value per dimension name, in order."""
        values = list(dimension_values or [])
        if len(values) != len(self.dimension_names):
            raise MetricsCacheValueError(
                f"metric {self.metric_name!r}: dimension values {values} do not match the "
                f"dimension names {self.dimension_names}")
        dims = {n: str(v) for n, v in zip(self.dimension_names, values)}
        self._cache._record(self.metric_name, value, self.unit, self.metric_type.value, dims)

    def update(self, value: float, request_id: str = "",
               dimensions: list[Dimension] | None = None) -> None:
        """Older API: record ``value`` with these dimensions (replacing the declared names)."""
        dims = list(dimensions or [])
        self.dimension_names = [d.name for d in dims]
        self.add_or_update(value, [d.value for d in dims], request_id)


class MetricsCache:
    """Collects a worker's metric updates until :meth:`drain`."""

    def __init__(self, model_name: str = "") -> None:
        self.model_name = model_name
        self.request_ids: dict[int, str] | None = None
        self._entries: list[dict] = []
        self._declared: dict[tuple[str, str], Metric] = {}

    # -- recording --------------------------------------------------------------------

    def _record(self, name: str, value: Any, unit: str, metric_type: str,
                dims: dict[str, str]) -> None:
        try:
            value = as_number(value, f"metric {name!r} value")
        except ValueError as exc:
            raise MetricsCacheValueError(str(exc)) from None
        if metric_type == "counter" and value < 0:
            raise MetricsCacheValueError(f"counter metric {name!r} cannot be incremented by a "
                                         f"negative value ({value})")
        dims.setdefault("ModelName", self.model_name)
        dims.setdefault("Level", "Model")
        self._entries.append({"name": str(name), "value": value, "unit": unit,
                              "type": metric_type, "dims": dims})

    def add_metric(self, name: str, value: float, unit: str, idx: Any = None,
                   dimensions: Dims = None,
                   metric_type: MetricTypes | str = MetricTypes.COUNTER) -> None:
        self._record(name, value, unit, _metric_type(metric_type), _dims_dict(dimensions))

    def add_counter(self, name: str, value: float, idx: Any = None,
                    dimensions: Dims = None) -> None:
        self._record(name, value, "count", "counter", _dims_dict(dimensions))

    def add_time(self, name: str, value: float, idx: Any = None, unit: str = "ms",
                 dimensions: Dims = None,
                 metric_type: MetricTypes | str = MetricTypes.GAUGE) -> None:
        self._record_in_unit("time", TIME_UNITS, name, value, unit, dimensions, metric_type)

    def add_size(self, name: str, value: float, idx: Any = None, unit: str = "MB",
                 dimensions: Dims = None,
                 metric_type: MetricTypes | str = MetricTypes.GAUGE) -> None:
        self._record_in_unit("size", SIZE_UNITS, name, value, unit, dimensions, metric_type)

    def _record_in_unit(self, kind: str, units: Any, name: str, value: float, unit: str,
                        dimensions: Dims, metric_type: MetricTypes | str) -> None:
        if unit not in units:
            raise MetricsCacheValueError(f"the unit of {kind} metric {name!r} must be one of "
                                         f"{units}, got {unit!r}")
        self._record(name, value, unit, _metric_type(metric_type), _dims_dict(dimensions))

    def add_percent(self, name: str, value: float, idx: Any = None, dimensions: Dims = None,
                    metric_type: MetricTypes | str = MetricTypes.GAUGE) -> None:
        self._record(name, value, "percent", _metric_type(metric_type), _dims_dict(dimensions))

    def add_error(self, name: str, value: float, dimensions: Dims = None) -> None:
        self._record(name, value, "", "counter", _dims_dict(dimensions))

    # -- declared metrics -------------------------------------------------------------

    def add_metric_to_cache(self, metric_name: str, unit: str,
                            dimension_names: list[str] | None = None,
                            metric_type: MetricTypes | str = MetricTypes.COUNTER) -> Metric:
        kind = _metric_type(metric_type)
        metric = Metric(self, metric_name, unit, list(dimension_names or []), kind)
        self._declared[(kind, metric_name)] = metric
        return metric

    def get_metric(self, metric_name: str,
                   metric_type: MetricTypes | str = MetricTypes.COUNTER) -> Metric:
        kind = _metric_type(metric_type)
        try:
            return self._declared[(kind, metric_name)]
        except KeyError:
            raise MetricsCacheKeyError(f"no {kind} metric named {metric_name!r}") from None

    # -- draining ---------------------------------------------------------------------

    def drain(self) -> list[dict]:
        """The entries recorded since the last drain (and forget them)."""
        entries = self._entries
        if entries:
            self._entries = []
        return entries


def timed(func: Callable) -> Callable:
    """Decorate a handler method to record its duration as ``ts_handler_<name>`` (ms) when
    the model config says ``handler: {profile: true}`` (TorchServe's opt-in)."""

    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        context = getattr(self, "context", None)
        config = getattr(context, "model_yaml_config", None) or {}
        handler_config = config.get("handler") if isinstance(config, dict) else None
        if not (isinstance(handler_config, dict) and handler_config.get("profile")):
            return func(self, *args, **kwargs)
        start = time.perf_counter()
        result = func(self, *args, **kwargs)
        context.metrics.add_time("ts_handler_" + func.__name__,
                                 round((time.perf_counter() - start) * 1000, 3))
        return result

    return wrapper
