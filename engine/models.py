"""Loading model versions: resolve the url, unpack the archive safely, read its manifest,
start its workers, and undo all of it when any step fails (no file or worker left behind)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from dagserve import __version__
from dagserve.archiver import read_model_manifest
from dagserve.archiver.handler_names import BUILTIN_HANDLERS, parse_handler
from dagserve.archiver.manifest import read_manifest_data

from .config import Config
from .errors import BadRequestError, ConflictError, InternalServerError
from .handler.model_config import load_model_config, model_config_name
from .intake import ArchiveIntake
from .registry import ModelVersion, Registry
from .model_config_keys import model_config_settings
from .tasks import TaskOwner
from .workers.batch_queue import BatchQueue
from .workers.devices import DeviceConfigError, ModelDevices
from .workers.launch import imports_torch
from .workers.pool import DeviceAllocator, WorkerPool
from .workers.process import Launcher, WorkerProcess, WorkerSpec, WorkerStartError
from .workers.ray_placement import ray_placement

log = logging.getLogger("dagserve.models")

SERVER_VERSION = __version__


@dataclass
class ModelOptions:
    """What a registration may set; ``None`` means "from the archive config or the default"."""

    model_name: str | None = None
    handler: str | None = None
    batch_size: int | None = None
    max_batch_delay: int | None = None
    initial_workers: int | None = None
    max_workers: int | None = None
    response_timeout: int | None = None
    startup_timeout: int | None = None
    owner: str | None = None
    loaded_at_startup: bool = False
    version: str | None = None
    ray: dict[str, Any] | None = None  # Ray placement options (POST /models?ray=<JSON>)
    group: dict[str, list[str]] | None = None  # a workflow's node group (WorkerSettings.group)


def archive_config(model_dir: Path, manifest: dict) -> dict[str, Any]:
    """The archive's model-config.yaml (``configFile`` in the manifest), ``{}`` without one."""
    try:
        return load_model_config(model_dir, manifest)
    except (OSError, ValueError) as exc:
        raise BadRequestError(f"Invalid model config file "
                              f"{model_config_name(manifest)}: {exc}") from None


async def install_requirements(model_dir: Path, requirements: str) -> None:
    """``install_py_dep_per_model``: pip-install the archive's requirements into the model
    directory itself, which the worker already puts first on ``sys.path``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(model_dir), "-r", str(model_dir / requirements),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        tail = " ".join(output.decode(errors="replace").strip().splitlines()[-3:])
        raise InternalServerError(f"Failed to install the requirements of {model_dir.name}: "
                                  f"{tail}")


def _uses_torch(model_dir: Path, manifest: dict, handler: str) -> bool:
    """Whether a worker will import torch (then the fork server imports torch before forking
    it, once): it loads a serialized model, a built-in handler, or a handler file that
    imports torch."""
    if (manifest.get("model") or {}).get("serializedFile"):
        return True
    try:
        name = parse_handler(handler)
        if name.module in BUILTIN_HANDLERS:
            return True
        return imports_torch(model_dir / name.file_name)
    except (ValueError, OSError):
        return True


def _group_uses_torch(model_dir: Path, manifest: dict, handler: str,
                      group: dict[str, list[str]] | None) -> bool:
    """``_uses_torch`` of the model, or of any model of its node group (each directory and
    handler module looked at once: a workflow's function nodes share both)."""
    if _uses_torch(model_dir, manifest, handler):
        return True
    seen = {(model_dir, handler.partition(":")[0])}
    for _model, member_handler, member_dir in (group or {}).values():
        directory = Path(member_dir) if member_dir else model_dir
        key = (directory, member_handler.partition(":")[0])
        if key in seen:
            continue
        seen.add(key)
        if _uses_torch(directory, read_manifest_data(directory), member_handler):
            return True
    return False


class ModelManager:
    """Registers, scales and unregisters model versions. ``on_change`` is called after each
    change (the snapshot writer); ``on_metrics`` gets the metrics a handler sent with a
    batch; ``tasks`` owns what runs in the background (async registrations, workers)."""

    def __init__(self, cfg: Config, registry: Registry, *, intake: ArchiveIntake,
                 work_dir: Path, devices: DeviceAllocator, model_log: TextIO | None,
                 tasks: TaskOwner, launcher: Launcher, on_change: Callable[[], None],
                 on_metrics: Callable[[ModelVersion, list[dict]], None], ray=None):
        self.cfg = cfg
        self.ray = ray  # a RayCluster when ray_address is set: workers are Ray actors
        self.registry = registry
        self.intake = intake
        self.sock_dir = work_dir / "sockets"
        self.sock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.devices = devices
        self.model_log = model_log
        self.tasks = tasks
        self.launcher = launcher
        self.on_change = on_change
        self.on_metrics = on_metrics

    def default_workers(self) -> int:
        if self.cfg.default_workers_per_model > 0:
            return self.cfg.default_workers_per_model
        import os

        return self.devices.gpu_count or os.cpu_count() or 1

    # -- register / scale / unregister ---------------------------------------------------

    async def register(self, url: str, opts: ModelOptions, *, synchronous: bool = True,
                       store: Path | None = None) -> ModelVersion:
        """Load a model version and start its initial workers.

        Synchronous: returns once the workers are up (or raises, leaving nothing behind).
        Otherwise returns at once; the workers start in a background task (its failure
        unregisters the model again and is logged)."""
        model_dir, manifest = await self.unpack(url, store)
        return await self.register_unpacked(url, model_dir, manifest, opts,
                                            synchronous=synchronous)

    async def register_unpacked(self, url: str, model_dir: Path, manifest, opts: ModelOptions,
                                *, synchronous: bool = True) -> ModelVersion:
        """``register`` of an archive already unpacked (``unpack``) into ``model_dir``."""
        return await self.register_dir(url, model_dir, opts, name=manifest.model_name,
                                       version=manifest.model_version, runtime=manifest.runtime,
                                       handler=manifest.handler or "", manifest=manifest.to_dict(),
                                       owns_dir=True, synchronous=synchronous)

    async def unpack(self, url: str, store: Path | None = None):
        """The archive at ``url`` unpacked (with its requirements installed when
        ``install_py_dep_per_model``): its directory and manifest."""
        model_dir, manifest = await self.intake.receive(
            url, self.cfg.model_store if store is None else store, read_model_manifest, "model")
        if self.cfg.install_py_dep_per_model and manifest.requirements_file:
            try:
                await install_requirements(model_dir, manifest.requirements_file)
            except BaseException:
                shutil.rmtree(model_dir, ignore_errors=True)
                raise
        return model_dir, manifest

    async def register_dir(self, url: str, model_dir: Path, opts: ModelOptions, *, name: str,
                           version: str, runtime: str, handler: str, manifest: dict,
                           owns_dir: bool, synchronous: bool = True) -> ModelVersion:
        """Register a model whose files are already in ``model_dir`` (an unpacked archive,
        or a workflow's directory for a function node). ``owns_dir``: delete it with the
        model."""
        try:
            mv = self._build(url, model_dir, opts, name=name, version=version, runtime=runtime,
                             handler=handler, manifest=manifest)
            mv.owns_dir = owns_dir
            self.registry.reserve(mv.name, mv.version)
        except BaseException:
            if owns_dir:
                shutil.rmtree(model_dir, ignore_errors=True)
            raise
        self.registry.add(mv)
        if synchronous:
            await self._start_or_unregister(mv)
        else:
            self.tasks.spawn(self._start_or_unregister, mv,
                             name=f"starting the workers of {mv.name} {mv.version}")
        return mv

    async def _start_or_unregister(self, mv: ModelVersion) -> None:
        try:
            await mv.pool.scale(mv.min_workers, mv.max_workers)
        except (WorkerStartError, OSError) as exc:
            log.error("model %s version %s failed to start: %s", mv.name, mv.version, exc)
            await self.unregister(mv.name, mv.version, force=True)
            raise InternalServerError(
                f"Failed to start workers for model {mv.name} version: {mv.version} ({exc})") \
                from None
        self.on_change()

    def _build(self, url: str, model_dir: Path, opts: ModelOptions, *, name: str, version: str,
               runtime: str, handler: str, manifest: dict) -> ModelVersion:
        name = opts.model_name or name
        version = opts.version or version
        raw = manifest
        acfg = archive_config(model_dir, raw)
        per_model = (self.cfg.models.get(name) or {}).get(version, {}) if self.cfg.models else {}

        def pick(value, *keys, default):
            if value is not None:
                return value
            for src in (acfg, per_model):  # API > model-config.yaml > config.properties
                for k in keys:
                    if k in src:
                        return int(src[k])
            return default

        handler = opts.handler or handler or self.cfg.default_service_handler or ""
        if not handler:
            raise BadRequestError(f"Model archive {url} names no handler")
        batch_size = pick(opts.batch_size, "batchSize", default=self.cfg.batch_size)
        delay = pick(opts.max_batch_delay, "maxBatchDelay", default=self.cfg.max_batch_delay)
        default_workers = self.default_workers() if opts.loaded_at_startup else 0
        min_workers = pick(opts.initial_workers, "minWorkers", default=default_workers)
        max_workers = pick(opts.max_workers, "maxWorkers", default=max(min_workers, 1))
        rt = pick(opts.response_timeout, "responseTimeout", default=self.cfg.default_response_timeout)
        st = pick(opts.startup_timeout, "startupTimeout", default=self.cfg.default_startup_timeout)
        if batch_size < 1 or delay < 0 or min_workers < 0 or max_workers < min_workers:
            raise BadRequestError("batch_size must be >= 1, max_batch_delay >= 0 and "
                                  "0 <= min workers <= max workers")
        try:
            extra = model_config_settings(acfg, name, self.cfg.job_queue_size)
            devices = ModelDevices(self.devices, extra.device_type, extra.device_ids, name)
        except DeviceConfigError as exc:
            raise BadRequestError(f"Invalid model config of {name}: {exc}") from None
        spec = WorkerSpec(model_name=name, model_dir=model_dir, handler=handler,
                          batch_size=batch_size, response_timeout=rt, startup_timeout=st,
                          decode_input=self.cfg.decode_input_request,
                          server_version=SERVER_VERSION,
                          limit_max_image_pixels=self.cfg.limit_max_image_pixels,
                          max_retry_timeout_s=extra.max_retry_timeout_s,
                          uses_torch=_group_uses_torch(model_dir, raw, handler, opts.group),
                          envelope=self.cfg.service_envelope, group=opts.group)
        queue = BatchQueue(name, batch_size, extra.job_queue_size, max_batch_delay_ms=delay)
        mv_holder: list[ModelVersion] = []
        placement = ray_placement(acfg, per_model, name, opts.ray)  # checked even without Ray
        factory = WorkerProcess if self.ray is None else \
            self.ray.worker_factory(model_dir, placement)
        pool = WorkerPool(spec, queue, devices=devices, sock_dir=self.sock_dir,
                          log_file=self.model_log, tasks=self.tasks, launcher=self.launcher,
                          on_metrics=lambda m: self.on_metrics(mv_holder[0], m),
                          worker_factory=factory)
        mv = ModelVersion(name=name, version=version, url=url, model_dir=model_dir,
                          manifest=raw, handler=handler, runtime=runtime,
                          batch_size=batch_size, max_batch_delay=delay, response_timeout=rt,
                          startup_timeout=st, queue=queue, pool=pool, min_workers=min_workers,
                          max_workers=max_workers, loaded_at_startup=opts.loaded_at_startup,
                          owner=opts.owner, ray=opts.ray)
        mv_holder.append(mv)
        return mv

    async def scale(self, mv: ModelVersion, min_workers: int, max_workers: int) -> None:
        mv.min_workers, mv.max_workers = min_workers, max_workers
        try:
            await mv.pool.scale(min_workers, max_workers)
        finally:
            self.on_change()

    async def unregister(self, name: str, version: str | None = None, *,
                         force: bool = False) -> ModelVersion:
        mv = self.registry.get(name, version)
        if mv.owner is not None and not force:
            raise ConflictError(f"Model {name} belongs to workflow {mv.owner}; "
                                f"unregister the workflow instead")
        self.registry.remove(mv.name, mv.version)
        try:
            if mv.owns_workers:  # not a node served by its node group's workers
                await mv.pool.close(grace_s=0 if force else self.cfg.unregister_model_timeout)
        finally:
            if mv.owns_dir:
                shutil.rmtree(mv.model_dir, ignore_errors=True)
            self.on_change()
        return mv

    async def close_all(self) -> None:
        await asyncio.gather(*(mv.pool.close() for mv in self.registry.all_versions()
                               if mv.owns_workers), return_exceptions=True)
