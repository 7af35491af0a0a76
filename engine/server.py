"""Run the server: build the runtime inside one task group, put the three HTTP frontends in
front of it, load what starts with the server; on SIGTERM/SIGINT stop the frontends, then
the runtime (engine/runtime.py owns everything else)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

import anyio
from aiohttp import web

from .auth import make_auth_middleware
from .config import Config, split_address
from .errors import DagserveError
from .frontend.grpc import start_grpc
from .frontend.http_guard import guard
from .frontend.inference import build_inference_server
from .frontend.management import build_management_app
from .frontend.metrics_api import build_metrics_app
from .frontend.middleware import make_common_middleware
from .frontend.observe_routes import dashboard_exempt
from .redact import server_redactor
from .runtime import Runtime
from .tasks import TaskOwner
from .tls import context_for, server_ssl_context

log = logging.getLogger("dagserve.server")

STARTED_LINE = "Model server started."


def _settle_heap() -> None:
    """Freeze what starting created (aiohttp, jsonschema, networkx ...) out of
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


class Frontends:
    """The three HTTP servers (inference, management, metrics) over one runtime."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.runners: list[web.BaseRunner] = []
        self._stop_grpc = None

    async def start(self) -> None:
        rt, cfg = self.runtime, self.runtime.cfg
        # every response counts in Requests2XX/4XX/5XX and goes to the access log
        common = make_common_middleware(rt.metrics.counting(rt.logs.access), cors_headers(cfg),
                                        server_redactor(cfg, rt.work_dir))
        auth = {} if rt.keys is None else {
            "inference": [make_auth_middleware(rt.keys, "inference")],
            "management": [make_auth_middleware(rt.keys, "management",
                                                {("OPTIONS", "/"), *dashboard_exempt()})]}
        inference = build_inference_server(
            rt.registry, middlewares=[common, *auth.get("inference", [])],
            max_request_size=cfg.max_request_size, run_workflow=rt.workflows.run,
            max_response_size=cfg.max_response_size, readiness=rt.readiness,
            open_inference=cfg.ts_open_inference_protocol, tracer=rt.tracer, access_log=None)
        management = build_management_app(rt, middlewares=[common, *auth.get("management", [])])
        runners: list[tuple[str, web.BaseRunner]] = [
            (cfg.inference_address, web.ServerRunner(inference, handle_signals=False)),
            (cfg.management_address, _app_runner(management))]
        if cfg.enable_metrics_api:  # TorchServe's key: false leaves the port closed
            runners.append((cfg.metrics_address,
                            _app_runner(build_metrics_app(rt.metrics, middlewares=[common]))))
        ssl_context = server_ssl_context(cfg)  # https:// addresses: TLS, never plain HTTP
        for address, runner in runners:
            host, port = split_address(address)
            await runner.setup()
            guard(runner.server, cfg.request_header_timeout, cfg.request_body_timeout)
            self.runners.append(runner)
            await web.TCPSite(runner, host, port, backlog=1024, reuse_address=True,
                              ssl_context=context_for(address, ssl_context)).start()
        self._stop_grpc = await start_grpc(cfg, registry=rt.registry,
                                           run_workflow=rt.workflows.run,
                                           management_owner=rt, keys=rt.keys)

    async def stop(self) -> None:
        if self._stop_grpc is not None:
            await self._stop_grpc()
        for runner in self.runners:
            await runner.cleanup()


def _app_runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(app, access_log=None, handle_signals=False)


async def _serve(cfg: Config, tasks: TaskOwner, stop: asyncio.Event) -> None:
    runtime = Runtime.build(cfg, tasks)
    frontends = Frontends(runtime)
    try:
        await frontends.start()
        await runtime.load_at_start()
        _settle_heap()
        print(STARTED_LINE, flush=True)
        log.info(STARTED_LINE)
        await stop.wait()
        log.info("stopping")
    finally:
        with anyio.CancelScope(shield=True):
            await frontends.stop()
            await runtime.stop()


async def serve(cfg: Config) -> None:
    """Run until SIGTERM/SIGINT. Every background task lives in this one task group."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    failure: BaseException | None = None
    async with anyio.create_task_group() as group:
        try:
            await _serve(cfg, TaskOwner(group), stop)
        except (DagserveError, OSError) as exc:  # reported by run(), not as a group
            failure = exc
        group.cancel_scope.cancel()  # whatever the owner still runs (a failed start never closed it)
    if failure is not None:
        raise failure


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
