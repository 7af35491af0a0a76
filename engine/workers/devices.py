"""Which device each worker of a model gets, from its model-config.yaml (TorchServe's
``deviceType`` and ``deviceIds``) and the server's GPUs (``number_of_gpu``):

- ``deviceType: cpu``: always the CPU;
- ``deviceIds: [..]``: round-robin over those GPU ids (ids that are not visible are an
  error at registration);
- otherwise the server-wide round-robin over the visible GPUs (shared by every model, as
  TorchServe's WorkLoadManager does), or the CPU when there is none.
A model that asks for GPUs on a machine without any is served on the CPU, with a warning."""

from __future__ import annotations

import itertools
import logging
from typing import Any, Protocol

log = logging.getLogger("dagserve.workers")


class GpuSource(Protocol):
    gpu_count: int

    def next(self) -> int | None: ...


class DeviceConfigError(ValueError):
    """deviceType / deviceIds that cannot be honoured; the message says why."""


def parse_device_config(config: dict[str, Any]) -> tuple[str | None, list[int] | None]:
    """(deviceType, deviceIds) from a model-config.yaml mapping, checked."""
    device_type = config.get("deviceType")
    if device_type is not None:
        if not isinstance(device_type, str) or device_type.lower() not in ("cpu", "gpu"):
            raise DeviceConfigError(f"deviceType must be cpu or gpu, got {device_type!r}")
        device_type = device_type.lower()
    ids = config.get("deviceIds")
    if ids is not None:
        if not isinstance(ids, list) or not ids or \
                not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise DeviceConfigError(f"deviceIds must be a non-empty list of GPU ids (integers "
                                    f">= 0), got {ids!r}")
    return device_type, ids


class ModelDevices:
    """The device source of one model version's workers (same interface as the shared
    allocator: ``gpu_count`` and ``next()``)."""

    def __init__(self, shared: GpuSource, device_type: str | None = None,
                 device_ids: list[int] | None = None, model_name: str = ""):
        self._shared = shared
        self._ids: list[int] | None = None
        self._cycle = None
        visible = shared.gpu_count
        if device_type == "cpu":
            self.gpu_count = 0
            return
        if (device_type == "gpu" or device_ids) and visible == 0:
            log.warning("model %s asks for GPUs (deviceType/deviceIds) but none is visible: "
                        "its workers run on the CPU", model_name)
            self.gpu_count = 0
            return
        if device_ids:
            missing = [i for i in device_ids if i >= visible]
            if missing:
                raise DeviceConfigError(f"deviceIds {missing} are not visible GPUs (this "
                                        f"machine has {visible}: ids 0-{visible - 1})")
            self._ids = list(device_ids)
            self._cycle = itertools.cycle(self._ids)
            self.gpu_count = len(set(self._ids))
            return
        self.gpu_count = visible

    @property
    def device_ids(self) -> list[int] | None:
        return list(self._ids) if self._ids is not None else None

    def next(self) -> int | None:
        if self.gpu_count == 0:
            return None
        if self._cycle is not None:
            return next(self._cycle)
        return self._shared.next()
