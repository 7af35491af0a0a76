"""The runtime: the one owner of the server's state and background work.

Built in one place (:meth:`Runtime.build`), it holds the registry, the model and workflow
managers, snapshots, metrics, logs, the private work directory and the :class:`TaskOwner`
every background task starts in. Each part gets what it uses when it is constructed; no
part reaches back into the runtime. :meth:`Runtime.stop` takes everything down in order:
background tasks (async registrations, worker watchers and restarts, timers) are cancelled
and awaited, workers stopped, and only then the last snapshot written, after which nothing
writes one again.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import workdir
from .auth import KeyStore
from .config import Config, startup_entries
from .errors import DagserveError
from .intake import ArchiveIntake
from .logs import Logs, setup_logging
from .metrics import MetricsCollector
from .models import ModelManager, ModelOptions
from .readiness import Readiness
from .registry import Registry
from .snapshot import SnapshotManager
from .system_metrics import SystemMetrics
from .tasks import TaskOwner
from .tracing import Tracer, tracer_for
from .workers.environment import worker_environment
from .workers.launch import ForkServerLauncher, SubprocessLauncher
from .workers.pool import DeviceAllocator, visible_gpu_count
from .workflow_manager import WorkflowManager

log = logging.getLogger("dagserve.runtime")


def is_model_archive(path: Path) -> bool:
    return path.suffix == ".mar" or path.name.endswith(".tar.gz") or \
        (path.is_dir() and (path / "MAR-INF").is_dir())


@dataclass(frozen=True, eq=False)
class Runtime:
    cfg: Config
    logs: Logs
    work_dir: Path
    tasks: TaskOwner
    registry: Registry
    metrics: MetricsCollector
    snapshots: SnapshotManager | None  # None when snapshots are off (model_snapshot / --ncs)
    models: ModelManager
    workflows: WorkflowManager
    keys: KeyStore | None  # None when token authorization is off
    system_metrics: SystemMetrics  # CPUUtilization ... in /metrics (TorchServe's names)
    readiness: Readiness  # Readiness.report(): /ping?ready=true, the v2 health/ready
    tracer: Tracer  # per-request traces, and their OpenTelemetry export when configured
    ray: Any = None  # a workers.ray_cluster.RayCluster when ray_address is set

    @classmethod
    def build(cls, cfg: Config, tasks: TaskOwner) -> "Runtime":
        """Open the logs and the private work directory and wire every part."""
        logs = setup_logging(cfg)
        for warning in cfg.startup_warnings:  # config keys read but not supported
            log.warning(warning)
        work_dir = workdir.create()  # and remove those of killed servers
        ray = None
        try:
            if cfg.ray_address:  # Ray is imported only then
                from .workers.ray_cluster import RayCluster

                ray = RayCluster.connect(cfg.ray_address)
            registry = Registry()
            metrics = MetricsCollector(registry, log=logs.metrics)
            snapshots = SnapshotManager(cfg, registry) if cfg.snapshots else None
            # blacklist_env_vars: the fork server and every worker start without them; on
            # Ray no worker is a local process: no fork server
            env = worker_environment(os.environ, cfg.blacklist_env_vars)
            launcher = ForkServerLauncher(tasks, logs.model.file, env=env) \
                if cfg.worker_fork_server and ray is None else SubprocessLauncher(env)
            models = ModelManager(
                cfg, registry, intake=ArchiveIntake(
                    cfg.allowed_urls, work_dir, max_total_bytes=cfg.max_archive_size,
                    max_files=cfg.max_archive_entries, max_ratio=cfg.max_archive_ratio),
                work_dir=work_dir, devices=DeviceAllocator(visible_gpu_count(cfg.number_of_gpu)),
                model_log=logs.model.file, tasks=tasks, launcher=launcher,
                on_change=snapshots.changed if snapshots is not None else _nothing,
                on_metrics=metrics.record_handler_metrics, ray=ray)
            workflows = WorkflowManager(cfg, registry, models)
            keys = None if cfg.disable_token_authorization else \
                KeyStore.load_or_create(cfg.key_file, cfg.token_expiration_min)
            system_metrics = SystemMetrics.from_config(cfg)
            system_metrics.register(metrics.prometheus)
            tracer = tracer_for(cfg)
        except BaseException:
            if ray is not None:
                ray.close()
            logs.close()
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        logs.start(tasks)
        metrics.start_server_log(tasks)
        if isinstance(launcher, ForkServerLauncher):
            launcher.start()  # importing torch takes seconds: begin before models load
        if system_metrics.names:
            tasks.spawn(system_metrics.run, name="system metrics")
        return cls(cfg=cfg, logs=logs, work_dir=work_dir, tasks=tasks, registry=registry,
                   metrics=metrics, snapshots=snapshots, models=models, workflows=workflows,
                   keys=keys, system_metrics=system_metrics, readiness=Readiness(registry),
                   tracer=tracer, ray=ray)

    def persist(self) -> None:
        """Write the snapshot of a change just made, before the API answers (SIGKILL-safe)."""
        if self.snapshots is not None:
            self.snapshots.flush()

    async def load_at_start(self) -> None:
        """The newest snapshot, else the models and workflows named by the configuration."""
        restored = False
        if self.cfg.model_snapshot:  # config.properties names what to restore (TorchServe)
            restored = await SnapshotManager(self.cfg, self.registry).restore_text(
                self.cfg.model_snapshot, self.models)
        elif self.snapshots is not None:
            restored = await self.snapshots.restore_latest(self.models, self.workflows)
        if not restored:
            for name, url in startup_entries(self.cfg.load_models, self.cfg.model_store,
                                             is_model_archive):
                try:
                    await self.models.register(url, ModelOptions(model_name=name,
                                                                 loaded_at_startup=True))
                except DagserveError as exc:
                    log.error("could not load model %s at start: %s", url, exc.message)
            await self.workflows.load_at_start()
        if self.snapshots is not None:
            self.snapshots.write("startup")
        self.readiness.startup_done = True

    async def stop(self) -> None:
        """Background tasks, then workers, then the last snapshot, then logs and files."""
        try:
            await self.tasks.close()
            await self.models.close_all()
            if self.ray is not None:
                self.ray.close()
            if self.snapshots is not None:
                self.snapshots.write("shutdown")
                self.snapshots.close()
            self.metrics.stop_server_log()
            self.tracer.close()
        finally:
            self.logs.close()
            shutil.rmtree(self.work_dir, ignore_errors=True)


def _nothing() -> None:
    pass
