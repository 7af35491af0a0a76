"""The server-side keys of an archive's model-config.yaml beyond the worker counts and batch
settings ``models.py`` already picks: ``deviceType``/``deviceIds`` (which device each worker
gets), ``jobQueueSize`` (this model's queue), ``maxRetryTimeoutInSec`` (how long a dead
worker is restarted), ``useVenv`` (accepted: requirements already go into the model's own
directory). Keys TorchServe reads that have no effect here are named in one warning."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .ts_catalogue import unsupported_model_config_keys
from .workers.devices import DeviceConfigError, parse_device_config

log = logging.getLogger("dagserve.models")

DEFAULT_MAX_RETRY_TIMEOUT_S = 300  # TorchServe's default


@dataclass(frozen=True)
class ModelConfigSettings:
    device_type: str | None
    device_ids: list[int] | None
    job_queue_size: int
    max_retry_timeout_s: float


def _positive_int(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DeviceConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def model_config_settings(config: dict[str, Any], model_name: str,
                          default_queue_size: int) -> ModelConfigSettings:
    """Read and check them; raises DeviceConfigError (a ValueError) naming the bad key."""
    device_type, device_ids = parse_device_config(config)
    unsupported = unsupported_model_config_keys(config)
    if unsupported:
        log.warning("model %s: model-config.yaml keys not supported by dagserve (no effect): "
                    "%s. See docs/compat-table.md.", model_name, ", ".join(unsupported))
    return ModelConfigSettings(
        device_type=device_type, device_ids=device_ids,
        job_queue_size=_positive_int(config, "jobQueueSize", default_queue_size),
        max_retry_timeout_s=float(_positive_int(config, "maxRetryTimeoutInSec",
                                                DEFAULT_MAX_RETRY_TIMEOUT_S)))
