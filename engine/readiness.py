"""Readiness, apart from liveness.

``/ping`` says the server is alive: it answers ``Healthy`` while the server serves, whatever
its models are doing (as TorchServe's does), so a liveness probe never restarts a server
that serves everything else fine because one model is loading or crashed. Readiness says
whether it can take all the traffic it is configured for: the models and workflows to
load at start (or from the last snapshot) are loaded, and every model version has at least
its ``min_workers`` ready. ``/ping?ready=true`` answers 200 ``Ready`` or 503 ``Not Ready``
with what is still loading; ``Readiness.report`` is the one function every API uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .registry import Registry


@dataclass(frozen=True)
class ReadinessReport:
    ready: bool
    starting: bool  # still loading the start-up models, workflows or snapshot
    loading: list[dict] = field(default_factory=list)  # model versions short of workers

    def body(self) -> dict:
        out: dict = {"status": "Ready" if self.ready else "Not Ready"}
        if self.starting:
            out["starting"] = True
        if self.loading:
            out["loading"] = self.loading
        return out


class Readiness:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.startup_done = False  # set by the server once start-up loading is over

    def report(self) -> ReadinessReport:
        loading = [{"modelName": mv.name, "modelVersion": mv.version,
                    "readyWorkers": mv.pool.ready_count, "minWorkers": mv.min_workers}
                   for mv in self.registry.all_versions()
                   if mv.pool.ready_count < mv.min_workers]
        starting = not self.startup_done
        return ReadinessReport(not loading and not starting, starting, loading)
