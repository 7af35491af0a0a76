"""Plain data the worker modules share: what the workers of one model version need
(``WorkerSpec``), one queued request (``Job``), and the error of a worker that could not
start."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from . import protocol
from .settings import WorkerSettings
from .stream import ResultStream


@dataclass
class WorkerSpec:
    """What the workers of one model version need: how the frontend treats them (timeouts)
    and what each is told (:meth:`settings_for`)."""

    model_name: str
    model_dir: Path
    handler: str
    batch_size: int = 1
    response_timeout: float = 120.0
    startup_timeout: float = 120.0
    decode_input: bool = True
    config_file: str | None = None
    server_version: str = ""
    limit_max_image_pixels: bool = True
    max_retry_timeout_s: float = 300.0  # maxRetryTimeoutInSec: how long restarts are tried
    uses_torch: bool = True  # a hint for the launcher: a serialized model or a built-in handler
    envelope: str | None = None  # service_envelope
    group: dict[str, list[str]] | None = None  # a workflow's node group (WorkerSettings.group)

    def settings_for(self, address: str | Path, gpu_id: int | None,
                     threads: int) -> WorkerSettings:
        """``address``: the Unix socket the worker connects to (see endpoint.py)."""
        return WorkerSettings(
            socket=str(address), model_dir=str(self.model_dir), model_name=self.model_name,
            handler=self.handler, gpu_id=gpu_id, batch_size=self.batch_size, threads=threads,
            decode_input=self.decode_input, server_version=self.server_version,
            config_file=self.config_file, limit_max_image_pixels=self.limit_max_image_pixels,
            envelope=self.envelope, group=self.group)


@dataclass(slots=True)
class Job:
    request: protocol.Request
    future: asyncio.Future
    enqueued: float
    stream: ResultStream | None = None  # set at the handler's first intermediate result
    probe: object = None  # a tracing.Attempt when the request is traced


class WorkerStartError(Exception):
    """The worker could not load its handler (or did not say so in time)."""
