"""Workflows: register a .war (validate and compile its spec, start one model per DAG node,
all or nothing), run requests through the scheduler, rescale, unregister, and the entries
that snapshots keep."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from dagserve.archiver import read_workflow_manifest
from dagserve.archiver.handler_names import parse_handler
from dagserve.workflows import (CompiledWorkflow, SpecError, check_functions, list_module_functions,
                       load_spec)

from .config import Config, startup_entries
from .errors import (BadRequestError, DagserveError, InternalServerError, PredictionError,
                     WorkflowNotFoundError)
from .models import ModelManager, ModelOptions
from .registry import ModelVersion, Registry, WorkflowEntry
from .scheduler import NodeFailed, Plan, run_plan
from .messages import Request, Response

log = logging.getLogger("dagserve.workflows")


def node_model_name(workflow: str, node: str) -> str:
    return f"{workflow}__{node}"


class WorkflowManager:
    def __init__(self, cfg: Config, registry: Registry, models: ModelManager):
        self.cfg = cfg
        self.registry = registry
        self.models = models

    # -- requests -------------------------------------------------------------------------

    async def run(self, name: str, request: Request) -> Response:
        entry = self.registry.workflows.get(name)
        if entry is None:
            raise WorkflowNotFoundError(f"Workflow not found: {name}")
        try:
            return await run_plan(entry.plan, entry.node_models, request)
        except NodeFailed as exc:
            if exc.status < 500:  # the node refused its input: keep its status and say so
                raise PredictionError(str(exc), exc.status) from None
            raise InternalServerError(str(exc), exc.status) from None

    # -- registration ---------------------------------------------------------------------

    async def register(self, url: str, name: str | None = None) -> WorkflowEntry:
        wf_dir, manifest = await self.models.intake.receive(
            url, self.cfg.workflow_store, read_workflow_manifest, "workflow")
        try:
            name = name or manifest.workflow_name
            self.registry.reserve_workflow(name)
        except BaseException:
            shutil.rmtree(wf_dir, ignore_errors=True)
            raise
        try:
            compiled = self._compile(wf_dir, manifest, name, Path(url).name)
            nodes = await self._start_nodes(name, compiled, wf_dir, manifest.handler)
        except BaseException:
            self.registry.release_workflow(name)
            shutil.rmtree(wf_dir, ignore_errors=True)
            raise
        entry = WorkflowEntry(name=name, url=url, compiled=compiled, workflow_dir=wf_dir,
                              node_models=nodes, plan=Plan.from_compiled(compiled))
        self.registry.add_workflow(entry)
        self.models.on_change()
        return entry

    def _compile(self, wf_dir: Path, manifest, name: str, url_name: str) -> CompiledWorkflow:
        spec_path = wf_dir / manifest.spec_file
        try:
            text = spec_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadRequestError(f"Cannot read the workflow specification "
                                  f"{manifest.spec_file}: {exc}") from None
        try:
            # errors name the archive's own file, not where the server unpacked it
            compiled = load_spec(text, name=name, source=f"{url_name}/{manifest.spec_file}")
            if compiled.functions:
                handler_file = wf_dir / handler_file_name(manifest.handler)
                available = list_module_functions(handler_file) if handler_file.exists() else set()
                check_functions(compiled, available)
        except SpecError as exc:
            raise BadRequestError(f"Invalid workflow specification: {exc}") from None
        return compiled

    async def _start_nodes(self, name: str, compiled: CompiledWorkflow, wf_dir: Path,
                           handler: str) -> dict[str, ModelVersion]:
        started: dict[str, ModelVersion] = {}

        async def start(node: str) -> None:
            settings = compiled.graph.nodes[node]["settings"]
            opts = ModelOptions(model_name=node_model_name(name, node),
                                batch_size=settings.batch_size,
                                max_batch_delay=settings.max_batch_delay_ms,
                                initial_workers=max(1, settings.min_workers),
                                max_workers=max(settings.max_workers, settings.min_workers, 1),
                                owner=name)
            if compiled.graph.nodes[node]["kind"] == "model":
                mv = await self.models.register(compiled.models[node].url, opts,
                                                   store=self.cfg.model_store)
            else:
                mv = await self.models.register_dir(
                    f"{name}:{node}", wf_dir, opts, name=opts.model_name or node, version="1.0",
                    runtime="python", handler=f"{Path(handler_file_name(handler)).stem}:{node}",
                    manifest={}, owns_dir=False)
            started[node] = mv

        results = await asyncio.gather(*(start(n) for n in compiled.topo_order),
                                       return_exceptions=True)
        failures = [(n, r) for n, r in zip(compiled.topo_order, results)
                    if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(self.models.unregister(mv.name, mv.version, force=True)
                                   for mv in started.values()), return_exceptions=True)
            reasons = [f"{n}: {getattr(r, 'message', None) or r}" for n, r in failures]
            raise InternalServerError(f"Workflow {name} has failed to register. "
                                      f"Failures: {reasons}")
        return started

    async def unregister(self, name: str) -> None:
        entry = self.registry.workflow(name)
        del self.registry.workflows[name]
        try:
            await asyncio.gather(*(self.models.unregister(mv.name, mv.version, force=True)
                                   for mv in entry.node_models.values()),
                                 return_exceptions=True)
        finally:
            shutil.rmtree(entry.workflow_dir, ignore_errors=True)
            self.models.on_change()

    async def scale(self, name: str, min_workers: int | None, max_workers: int | None) -> None:
        entry = self.registry.workflow(name)
        await asyncio.gather(*(self.models.scale(
            mv, mv.min_workers if min_workers is None else min_workers,
            max(mv.max_workers if max_workers is None else max_workers,
                mv.min_workers if min_workers is None else min_workers))
            for mv in entry.node_models.values()))

    # -- start and snapshots --------------------------------------------------------------

    async def load_at_start(self) -> None:
        for name, url in startup_entries(self.cfg.load_workflows, self.cfg.workflow_store,
                                         lambda p: p.suffix == ".war"):
            try:
                await self.register(url, name)
            except DagserveError as exc:
                log.error("could not load workflow %s at start: %s", url, exc.message)

    async def restore(self, entries: list[dict]) -> None:
        for item in entries:
            try:
                entry = await self.register(item["url"], item["name"])
            except DagserveError as exc:
                log.error("could not restore workflow %s: %s", item.get("name"), exc.message)
                continue
            for node, sizes in (item.get("nodes") or {}).items():
                mv = entry.node_models.get(node)
                if mv is not None and (sizes.get("minWorkers"), sizes.get("maxWorkers")) != \
                        (mv.min_workers, mv.max_workers):
                    await self.models.scale(mv, int(sizes["minWorkers"]), int(sizes["maxWorkers"]))

    def describe(self, name: str) -> list[dict]:
        entry = self.registry.workflow(name)
        g = entry.compiled.global_settings
        return [{"workflowName": entry.name, "workflowUrl": entry.url,
                 "minWorkers": g.min_workers, "maxWorkers": g.max_workers,
                 "batchSize": g.batch_size, "maxBatchDelay": g.max_batch_delay_ms,
                 "retryAttempts": g.retry_attempts, "timeoutMs": g.timeout_ms,
                 "workflowDag": entry.compiled.to_json(),
                 "nodes": {node: {"model": mv.name, "workers": mv.pool.ready_count}
                           for node, mv in entry.node_models.items()}}]


def handler_file_name(handler: str) -> str:
    """The manifest's handler (``wf_handler.py`` or ``wf_handler``) as a file name."""
    return parse_handler(handler).file_name
