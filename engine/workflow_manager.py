"""Workflows: register a .war (validate and compile its spec, start one model per DAG node,
all or nothing), run requests through the scheduler, rescale, unregister, and the entries
that snapshots keep."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

from dagserve.archiver import read_workflow_manifest
from dagserve.archiver.handler_names import parse_handler
from dagserve.workflows import (CompiledWorkflow, SpecError, check_functions, list_module_functions,
                       load_spec)

from . import tracing
from .config import Config, startup_entries
from .errors import (BadRequestError, DagserveError, InternalServerError, PredictionError,
                     WorkflowNotFoundError)
from .node_groups import NodeQueue, fusable, group_member, node_groups, sibling_modules
from .models import ModelManager, ModelOptions, archive_config
from .flow import FlowPlan, request_deadline_ms, run_flow
from .registry import DEFAULT_WORKFLOW_VERSION, ModelVersion, Registry, WorkflowEntry
from .scheduler import NodeFailed, Plan, run_plan
from .shared_models import resolve_shared
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

    async def run(self, name: str, request: Request, version: str | None = None,
                  trace: tracing.Trace | None = None) -> Response:
        """Run one request; with ``trace``, every node attempt (and skip) is recorded in it.
        An error raised for a failed node names it in its ``node`` attribute."""
        entry = self.registry.workflows.get(name) if version is None else \
            self.registry.workflow(name, version)
        if entry is None:
            raise WorkflowNotFoundError(f"Workflow not found: {name}")
        # ``entry`` is this version, to the end of the request, whatever the default becomes
        token = None
        if trace is not None:
            trace.expect(entry.flow.order, entry.targets, entry.version)
            token = tracing.current.set(trace)
        started = time.perf_counter()
        status = 500
        try:
            deadline = request_deadline_ms(request.headers, entry.flow.deadline_ms)
            if deadline is None and not entry.general:  # TorchServe's specs: the fast paths
                resp = await run_plan(entry.plan, entry.targets, request)
            else:
                resp = await run_flow(entry.flow, entry.targets, request, deadline)
            status = getattr(resp, "code", 200)  # a stream (its first chunk is out): ok
            return resp
        except DagserveError as exc:
            status = exc.status
            raise
        except NodeFailed as exc:
            # a node that refused its input keeps its status and says so
            error: DagserveError = PredictionError(str(exc), exc.status) if exc.status < 500 \
                else InternalServerError(str(exc), exc.status)
            status = error.status
            error.node = exc.node  # type: ignore[attr-defined]
            raise error from None
        finally:
            entry.stats.count(status, time.perf_counter() - started)
            if token is not None:
                tracing.current.reset(token)

    # -- registration ---------------------------------------------------------------------

    async def register(self, url: str, name: str | None = None,
                       version: str | None = None,
                       response_timeout: int | None = None) -> WorkflowEntry:
        version = version or DEFAULT_WORKFLOW_VERSION
        wf_dir, manifest = await self.models.intake.receive(
            url, self.cfg.workflow_store, read_workflow_manifest, "workflow")
        try:
            name = name or manifest.workflow_name
            self.registry.reserve_workflow(name, version)
        except BaseException:
            shutil.rmtree(wf_dir, ignore_errors=True)
            raise
        unpacked: dict = {}  # model node -> (directory, manifest), with share-workers
        try:
            compiled = self._compile(wf_dir, manifest, name, Path(url).name)
            shared = resolve_shared(self.registry, name, compiled.shared)
            owned = [n for n in compiled.topo_order if n not in compiled.shared]
            unpacked = await self._unpack_for_sharing(compiled, owned)
            groups = node_groups(compiled, owned, self._own_config(name),
                                 *_model_sharing(compiled, unpacked, wf_dir, manifest.handler))
            nodes = await self._start_nodes(name, compiled, owned, groups, wf_dir,
                                            manifest.handler, version, response_timeout,
                                            unpacked)
        except BaseException:
            self.registry.release_workflow(name, version)
            shutil.rmtree(wf_dir, ignore_errors=True)
            for model_dir, _ in unpacked.values():
                shutil.rmtree(model_dir, ignore_errors=True)  # gone already when registered
            raise
        plan = Plan.from_compiled(compiled, fusable(compiled, groups))
        entry = WorkflowEntry(name=name, url=url, compiled=compiled, workflow_dir=wf_dir,
                              node_models=nodes, plan=plan, version=version, shared=shared,
                              targets={**nodes, **shared},
                              flow=FlowPlan.from_compiled(compiled, plan),
                              general=compiled.uses_flow)
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

    async def _unpack_for_sharing(self, compiled: CompiledWorkflow, owned: list[str]) -> dict:
        """With ``share-workers`` (and no Ray cluster: a Ray worker gets one model's files),
        each owned model node's archive unpacked: node -> (directory, manifest)."""
        unpacked: dict = {}
        if not compiled.share_workers or self.models.ray is not None:
            return unpacked
        try:
            for node in owned:
                if compiled.graph.nodes[node]["kind"] == "model":
                    unpacked[node] = await self.models.unpack(compiled.models[node].url,
                                                              self.cfg.model_store)
        except BaseException:
            for model_dir, _ in unpacked.values():
                shutil.rmtree(model_dir, ignore_errors=True)
            raise
        return unpacked

    async def _start_nodes(self, name: str, compiled: CompiledWorkflow, owned: list[str],
                           groups: list[list[str]], wf_dir: Path, handler: str, version: str,
                           response_timeout: int | None = None,
                           unpacked: dict | None = None) -> dict[str, ModelVersion]:
        """One model per node of ``owned``; the nodes of each of ``groups`` share their
        workers (node_groups.py). ``unpacked``: model nodes whose archives are unpacked."""
        started: dict[str, ModelVersion] = {}
        unpacked = unpacked or {}
        module = Path(handler_file_name(handler)).stem
        grouped = {node: group for group in groups for node in group}

        def member_handler(node: str) -> str:
            if node in unpacked:
                return unpacked[node][1].handler or self.cfg.default_service_handler or ""
            return f"{module}:{node}"

        async def start(node: str) -> None:
            settings = compiled.graph.nodes[node]["settings"]
            group = grouped.get(node)
            opts = ModelOptions(model_name=node_model_name(name, node),
                                batch_size=settings.batch_size,
                                max_batch_delay=settings.max_batch_delay_ms,
                                initial_workers=max(1, settings.min_workers),
                                max_workers=max(settings.max_workers, settings.min_workers, 1),
                                response_timeout=response_timeout, owner=name,
                                version=version,
                                group=None if group is None else
                                {n: [node_model_name(name, n), member_handler(n),
                                     str(unpacked[n][0] if n in unpacked else wf_dir)]
                                 for n in group})
            if node in unpacked:
                mv = await self.models.register_unpacked(compiled.models[node].url,
                                                         *unpacked[node], opts)
            elif compiled.graph.nodes[node]["kind"] == "model":
                mv = await self.models.register(compiled.models[node].url, opts,
                                                   store=self.cfg.model_store)
            else:
                mv = await self.models.register_dir(
                    f"{name}:{node}", wf_dir, opts, name=opts.model_name or node, version=version,
                    runtime="python", handler=f"{module}:{node}",
                    manifest={}, owns_dir=False)
            started[node] = mv
            for other in group[1:] if group else ():
                own = dict(url=f"{name}:{other}", model_dir=wf_dir, manifest={},
                           runtime="python", owns_dir=False)  # a function node's
                if other in unpacked:
                    model_dir, manifest = unpacked[other]
                    own = dict(url=compiled.models[other].url, model_dir=model_dir,
                               manifest=manifest.to_dict(), runtime=manifest.runtime,
                               owns_dir=True)
                member = group_member(mv, other, node_model_name(name, other),
                                      member_handler(other), **own)
                self.registry.reserve(member.name, member.version)
                self.registry.add(member)
                started[other] = member
            if group:
                mv.queue = NodeQueue(mv.queue, node)

        firsts = [n for n in owned if n not in grouped or grouped[n][0] == n]
        results = await asyncio.gather(*(start(n) for n in firsts), return_exceptions=True)
        failures = [(n, r) for n, r in zip(firsts, results)
                    if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(self.models.unregister(mv.name, mv.version, force=True)
                                   for mv in started.values()), return_exceptions=True)
            reasons = [f"{n}: {getattr(r, 'message', None) or r}" for n, r in failures]
            raise InternalServerError(f"Workflow {name} has failed to register. "
                                      f"Failures: {reasons}")
        return started

    def _own_config(self, workflow: str):
        """A node model's own entry in config.properties' ``models`` (node_groups.py)."""
        return lambda node: (self.cfg.models or {}).get(node_model_name(workflow, node))

    async def unregister(self, name: str, version: str | None = None) -> None:
        """One version, or (without ``version``) every version of the workflow."""
        entries = [self.registry.workflow(name, version)] if version is not None \
            else self.registry.workflow_versions(name)
        for entry in entries:
            self.registry.remove_workflow(entry.name, entry.version)
        await asyncio.gather(*(self._release(entry) for entry in entries))

    async def _release(self, entry: WorkflowEntry) -> None:
        try:
            await asyncio.gather(*(self.models.unregister(mv.name, mv.version, force=True)
                                   for mv in entry.node_models.values()),
                                 return_exceptions=True)
        finally:
            shutil.rmtree(entry.workflow_dir, ignore_errors=True)
            self.models.on_change()

    async def scale(self, name: str, min_workers: int | None, max_workers: int | None,
                    version: str | None = None) -> None:
        entry = self.registry.workflow(name, version)
        owners = [mv for mv in entry.node_models.values() if mv.owns_workers]
        await asyncio.gather(*(self.models.scale(
            mv, mv.min_workers if min_workers is None else min_workers,
            max(mv.max_workers if max_workers is None else max_workers,
                mv.min_workers if min_workers is None else min_workers))
            for mv in owners))
        for mv in entry.node_models.values():  # nodes that share those workers
            if not mv.owns_workers:
                first = next(o for o in owners if o.pool is mv.pool)
                mv.min_workers, mv.max_workers = first.min_workers, first.max_workers

    # -- start and snapshots --------------------------------------------------------------

    async def load_at_start(self) -> None:
        for name, url in startup_entries(self.cfg.load_workflows, self.cfg.workflow_store,
                                         lambda p: p.suffix == ".war"):
            try:
                await self.register(url, name)
            except DagserveError as exc:
                log.error("could not load workflow %s at start: %s", url, exc.message)

    async def restore(self, entries: list[dict]) -> None:
        """Register every version again (the models they share are restored before), then
        give each name the default it had."""
        defaults = []
        for item in entries:
            try:
                entry = await self.register(item["url"], item["name"], item.get("version"))
            except DagserveError as exc:
                log.error("could not restore workflow %s: %s", item.get("name"), exc.message)
                continue
            if item.get("default"):
                defaults.append(entry)
            for node, sizes in (item.get("nodes") or {}).items():
                mv = entry.node_models.get(node)
                if mv is not None and (sizes.get("minWorkers"), sizes.get("maxWorkers")) != \
                        (mv.min_workers, mv.max_workers):
                    await self.models.scale(mv, int(sizes["minWorkers"]), int(sizes["maxWorkers"]))
        for entry in defaults:
            self.registry.set_workflow_default(entry.name, entry.version)

    def describe(self, name: str, version: str | None = None) -> list[dict]:
        """The default version, one version, or every version (``all``)."""
        entries = self.registry.workflow_versions(name) if version == "all" \
            else [self.registry.workflow(name, version)]
        return [self._describe_one(entry) for entry in entries]

    def _describe_one(self, entry: WorkflowEntry) -> dict:
        g = entry.compiled.global_settings
        owners = {id(mv.pool): mv.name for mv in entry.node_models.values() if mv.owns_workers}
        nodes = {node: {"model": mv.name, "version": mv.version,
                        "workers": mv.pool.ready_count}
                 for node, mv in entry.node_models.items()}
        for node, mv in entry.node_models.items():  # a node group's (node_groups.py)
            if not mv.owns_workers:
                nodes[node]["sharesWorkersOf"] = owners.get(id(mv.pool))
        nodes.update({node: {"model": mv.name, "version": mv.version, "shared": True,
                             "workers": mv.pool.ready_count}
                      for node, mv in entry.shared.items()})
        return {"workflowName": entry.name, "workflowUrl": entry.url,
                "workflowVersion": entry.version,
                "isDefault": self.registry.workflows.get(entry.name) is entry,
                "minWorkers": g.min_workers, "maxWorkers": g.max_workers,
                "batchSize": g.batch_size, "maxBatchDelay": g.max_batch_delay_ms,
                "retryAttempts": g.retry_attempts, "timeoutMs": g.timeout_ms,
                "workflowDag": entry.compiled.to_json(), "nodes": nodes}


def _model_sharing(compiled: CompiledWorkflow, unpacked: dict, wf_dir: Path,
                   wf_handler: str) -> tuple:
    """``node_groups``' ``model_key`` and ``modules`` with ``share-workers`` (the model nodes
    in ``unpacked``, and the function nodes): nodes share workers when their archives' model
    config (a function node: none) and runtime are the same, and their files (handlers
    aside) have different names. Without it (nothing unpacked): function nodes only."""

    def model_key(node: str):
        if compiled.graph.nodes[node]["kind"] == "function":
            return [{}, "python"]
        if node not in unpacked or compiled.models[node].keeps_own_workers:
            return None
        model_dir, manifest = unpacked[node]
        return [archive_config(model_dir, manifest.to_dict()), manifest.runtime]

    def modules(node: str) -> dict[str, tuple[Path, bool]]:
        directory, handler = wf_dir, wf_handler
        if node in unpacked:
            directory, handler = unpacked[node][0], unpacked[node][1].handler or ""
        try:
            handler_module = parse_handler(handler).module
        except ValueError:
            handler_module = ""
        return sibling_modules(directory, handler_module)

    return (model_key if unpacked else None), modules


def handler_file_name(handler: str) -> str:
    """The manifest's handler (``wf_handler.py`` or ``wf_handler``) as a file name."""
    return parse_handler(handler).file_name
