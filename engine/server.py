"""Assemble and run the server: logs, registry, model manager, the three HTTP apps, the
models and workflows to load at start; stop everything on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from .config import Config, split_address, startup_entries
from .errors import DagserveError
from .frontend.inference import build_inference_server
from .frontend.management import build_management_app
from .frontend.metrics_api import build_metrics_app
from .frontend.middleware import make_common_middleware
from .logs import setup_logging
from .metrics import MetricsCollector
from .models import ModelManager, ModelOptions
from .registry import Registry
from .snapshot import SnapshotManager
from .workflow_manager import WorkflowManager
from .workers.pool import DeviceAllocator, visible_gpu_count

log = logging.getLogger("dagserve.server")

STARTED_LINE = "Model server started."


def is_model_archive(path: Path) -> bool:
    return path.suffix == ".mar" or path.name.endswith(".tar.gz") or \
        (path.is_dir() and (path / "MAR-INF").is_dir())


def _settle_heap() -> None:
    """Freeze what starting created (torch, imported to count GPUs, is most of it) out of
    the garbage collector's view: otherwise every full collection walks it again, a pause
    of about 0.1 s that lands on whichever requests are in flight (the p99 of every
    benchmark)."""
    gc.collect()
    gc.freeze()


def cors_headers(cfg: Config) -> dict[str, str]:
    """TorchServe's ``cors_allowed_*`` keys as the headers every response carries."""
    pairs = (("Access-Control-Allow-Origin", cfg.cors_allowed_origin),
             ("Access-Control-Allow-Methods", cfg.cors_allowed_methods),
             ("Access-Control-Allow-Headers", cfg.cors_allowed_headers))
    return {name: value for name, value in pairs if value}


class Server:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.registry = Registry()
        self.runners: list[web.BaseRunner] = []
        self.work_dir: Path | None = None
        self.model_log = None
        self.logs = None
        self.models: ModelManager | None = None
        self.workflows = None
        self.metrics = None
        self.snapshots = None
        self.ray = None

    async def start(self) -> None:
        cfg = self.cfg
        cfg.log_dir.mkdir(parents=True, exist_ok=True)
        self.logs = setup_logging(cfg)
        self.work_dir = Path(tempfile.mkdtemp(prefix="dagserve-"))
        os.chmod(self.work_dir, 0o700)
        self.model_log = self.logs.model.file  # workers write their output straight to it
        devices = DeviceAllocator(visible_gpu_count(cfg.number_of_gpu))
        if cfg.ray_address:  # Ray is imported only then
            from .workers.ray_cluster import RayCluster

            self.ray = RayCluster.connect(cfg.ray_address)
        self.models = ModelManager(cfg, self.registry, work_dir=self.work_dir, devices=devices,
                                   model_log=self.model_log, on_change=self._changed,
                                   ray=self.ray)
        self.workflows = WorkflowManager(cfg, self.registry, self.models)
        self.metrics = MetricsCollector(self.registry, log=self.logs.metrics)
        self.models.on_metrics = self.metrics.record_handler_metrics
        self.logs.start()
        self.metrics.start_server_log()
        # every response counts in Requests2XX/4XX/5XX and goes to the access log
        common = make_common_middleware(self.metrics.counting(self.logs.access),
                                        cors_headers(cfg))
        auth = self._auth_middlewares()
        inference = build_inference_server(
            self.registry, middlewares=[common, *auth.get("inference", [])],
            max_request_size=cfg.max_request_size, run_workflow=self.workflows.run,
            max_response_size=cfg.max_response_size, access_log=None)
        management = build_management_app(self, middlewares=[common,
                                                             *auth.get("management", [])])
        runners: list[tuple[str, web.BaseRunner]] = [
            (cfg.inference_address, web.ServerRunner(inference, handle_signals=False)),
            (cfg.management_address, self._app_runner(management)),
            (cfg.metrics_address,
             self._app_runner(build_metrics_app(self.metrics, middlewares=[common])))]
        for address, runner in runners:
            host, port = split_address(address)
            await runner.setup()
            self.runners.append(runner)
            await web.TCPSite(runner, host, port, backlog=1024, reuse_address=True).start()
        await self._load_at_start()
        _settle_heap()

    @staticmethod
    def _app_runner(app: web.Application) -> web.AppRunner:
        return web.AppRunner(app, access_log=None, handle_signals=False)

    def _auth_middlewares(self) -> dict[str, list]:
        if self.cfg.disable_token_authorization:
            return {}
        from .auth import KeyStore, make_auth_middleware

        self.keys = KeyStore.load_or_create(self.cfg.key_file)
        return {kind: [make_auth_middleware(self.keys, kind)]
                for kind in ("inference", "management")}

    def _changed(self) -> None:
        if self.snapshots is not None:
            self.snapshots.changed()

    async def _load_at_start(self) -> None:
        assert self.models is not None
        restored = False
        if self.cfg.snapshots:
            self.snapshots = SnapshotManager(self)
            restored = await self.snapshots.restore_latest()
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

    async def stop(self) -> None:
        if self.snapshots is not None:
            self.snapshots.write("shutdown")
        for runner in self.runners:
            await runner.cleanup()
        if self.models is not None:
            await self.models.close_all()
        if self.ray is not None:
            self.ray.close()
        if self.metrics is not None:
            self.metrics.stop_server_log()
        if self.logs is not None:
            self.logs.close()
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)


async def serve(cfg: Config) -> None:
    server = Server(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        print(STARTED_LINE, flush=True)
        log.info(STARTED_LINE)
        await stop.wait()
        log.info("stopping")
    finally:
        await server.stop()


def run(cfg: Config) -> int:
    try:
        import uvloop  # optional: faster event loop
    except ImportError:
        uvloop = None
    try:
        if uvloop is not None:
            uvloop.run(serve(cfg))
        else:
            asyncio.run(serve(cfg))
    except DagserveError as exc:
        print(f"dagserve: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dagserve: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
