"""What the server holds: registered model versions (with their default version) and
workflows. Plain bookkeeping: loading and starting workers live in ``models.py`` and
``workflow_manager.py``."""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConflictError, ModelNotFoundError, WorkflowNotFoundError
from .histogram import LATENCY_BUCKETS_S, Histogram, WorkflowStats
from .workers.batch_queue import BatchQueue
from .workers.pool import WorkerPool


@dataclass
class ModelStats:
    """Counters kept as plain numbers on the hot path; exported at scrape time."""

    requests: int = 0
    latency_us: float = 0.0
    status_2xx: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    timeouts: int = 0  # of status_5xx: 504 (a node's or the worker's time limit)
    retried: int = 0  # attempts after the first (workflow nodes)
    skipped: int = 0  # workflow node calls that did not run (a condition said no)
    latency: Histogram = field(default_factory=Histogram)  # its sum: latency_us
    handler_metrics: dict[tuple, list] = field(default_factory=dict)

    def count(self, status: int, latency_s: float) -> None:
        self.requests += 1
        self.latency_us += latency_s * 1e6
        self.latency.counts[bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1
        if status < 300:
            self.status_2xx += 1
        elif status < 500:
            self.status_4xx += 1
        else:
            self.status_5xx += 1
            if status == 504:
                self.timeouts += 1


@dataclass
class ModelVersion:
    name: str
    version: str
    url: str
    model_dir: Path
    manifest: dict[str, Any]
    handler: str
    runtime: str
    batch_size: int
    max_batch_delay: int
    response_timeout: int
    startup_timeout: int
    queue: BatchQueue
    pool: WorkerPool
    min_workers: int = 1
    max_workers: int = 1
    loaded_at_startup: bool = False
    owner: str | None = None  # the workflow a node model belongs to
    owns_dir: bool = True  # model_dir is deleted with the model (not for function nodes)
    owns_workers: bool = True  # False: a node served by its node group's workers
    ray: dict[str, Any] | None = None  # the registration's Ray placement options
    stats: ModelStats = field(default_factory=ModelStats)
    registered_at: float = field(default_factory=time.time)


DEFAULT_WORKFLOW_VERSION = "1.0"


@dataclass
class WorkflowEntry:
    name: str
    url: str
    compiled: Any  # dagserve.workflows.CompiledWorkflow
    workflow_dir: Path
    node_models: dict[str, ModelVersion]  # dag node name -> its model (function nodes too)
    plan: Any  # scheduler.Plan: what a request runs, built once at registration
    version: str = DEFAULT_WORKFLOW_VERSION
    shared: dict[str, ModelVersion] = field(default_factory=dict)  # `model:` nodes, not owned
    targets: dict[str, ModelVersion] = field(default_factory=dict)  # node_models + shared
    flow: Any = None  # flow.FlowPlan: the general path (new keys, or a request's deadline)
    general: bool = False  # the spec uses the new keys: every request takes the general path
    stats: WorkflowStats = field(default_factory=WorkflowStats)


class Registry:
    def __init__(self) -> None:
        self._models: dict[str, dict[str, ModelVersion]] = {}
        self._defaults: dict[str, str] = {}
        self._reserved: set[tuple[str, str]] = set()
        self.workflows: dict[str, WorkflowEntry] = {}  # name -> its default version
        self._workflow_versions: dict[str, dict[str, WorkflowEntry]] = {}
        self._reserved_workflows: set[tuple[str, str]] = set()

    # -- models -----------------------------------------------------------------------

    def reserve(self, name: str, version: str) -> None:
        """Claim a name+version before loading it, so two concurrent registrations of the
        same model cannot both win."""
        if (name, version) in self._reserved or version in self._models.get(name, {}):
            raise ConflictError(f"Model version {version} is already registered for model {name}")
        self._reserved.add((name, version))

    def release(self, name: str, version: str) -> None:
        self._reserved.discard((name, version))

    def add(self, mv: ModelVersion) -> None:
        self._reserved.discard((mv.name, mv.version))
        versions = self._models.setdefault(mv.name, {})
        versions[mv.version] = mv
        self._defaults.setdefault(mv.name, mv.version)

    def remove(self, name: str, version: str) -> ModelVersion:
        versions = self._models[name]
        mv = versions.pop(version)
        if not versions:
            del self._models[name]
            del self._defaults[name]
        elif self._defaults[name] == version:
            self._defaults[name] = sorted(versions)[-1]
        return mv

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFoundError(f"Model not found: {name}")
        if version is None:
            return versions[self._defaults[name]]
        mv = versions.get(version)
        if mv is None:
            raise ModelNotFoundError(f"Model version: {version} does not exist for model: {name}")
        return mv

    def versions(self, name: str) -> list[ModelVersion]:
        if name not in self._models:
            raise ModelNotFoundError(f"Model not found: {name}")
        return list(self._models[name].values())

    def default_version(self, name: str) -> str:
        self.versions(name)
        return self._defaults[name]

    def set_default(self, name: str, version: str) -> None:
        self.get(name, version)
        self._defaults[name] = version

    def names(self) -> list[str]:
        return sorted(self._models)

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in sorted(self._models) for mv in self._models[name].values()]

    # -- workflows (versions as for models: the first registered is the default) ---------

    def reserve_workflow(self, name: str, version: str = DEFAULT_WORKFLOW_VERSION) -> None:
        if version in self._workflow_versions.get(name, {}) or \
                (name, version) in self._reserved_workflows:
            raise ConflictError(f"Workflow {name} is already registered."
                                if version == DEFAULT_WORKFLOW_VERSION else
                                f"Workflow {name} version {version} is already registered.")
        self._reserved_workflows.add((name, version))

    def release_workflow(self, name: str, version: str = DEFAULT_WORKFLOW_VERSION) -> None:
        self._reserved_workflows.discard((name, version))

    def add_workflow(self, entry: WorkflowEntry) -> None:
        self._reserved_workflows.discard((entry.name, entry.version))
        self._workflow_versions.setdefault(entry.name, {})[entry.version] = entry
        self.workflows.setdefault(entry.name, entry)

    def workflow(self, name: str, version: str | None = None) -> WorkflowEntry:
        entry = self.workflows.get(name)
        if entry is None:
            raise WorkflowNotFoundError(f"Workflow not found: {name}")
        if version is None or version == entry.version:
            return entry
        found = self._workflow_versions[name].get(version)
        if found is None:
            raise WorkflowNotFoundError(f"Workflow version {version} does not exist for "
                                        f"workflow {name}")
        return found

    def workflow_versions(self, name: str) -> list[WorkflowEntry]:
        self.workflow(name)
        return list(self._workflow_versions[name].values())

    def all_workflow_versions(self) -> list[WorkflowEntry]:
        return [e for name in sorted(self._workflow_versions)
                for e in self._workflow_versions[name].values()]

    def set_workflow_default(self, name: str, version: str) -> None:
        """One assignment: a request already running keeps the entry it looked up."""
        self.workflows[name] = self.workflow(name, version)

    def remove_workflow(self, name: str, version: str) -> WorkflowEntry:
        versions = self._workflow_versions[name]
        entry = versions.pop(version)
        if not versions:
            del self._workflow_versions[name]
            del self.workflows[name]
        elif self.workflows[name] is entry:
            self.workflows[name] = versions[sorted(versions)[-1]]
        return entry
