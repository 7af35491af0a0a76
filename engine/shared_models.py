"""Workflow nodes written ``model: <registered>[/version]``: they use a model registered at
/models (its queue and workers, shared with /predictions and other workflows) instead of
loading a private copy. The workflow does not own such a model: it resolves it once at
registration, and the model cannot be unregistered while a workflow version uses it."""

from __future__ import annotations

from .errors import BadRequestError, DagserveError
from .registry import ModelVersion, Registry


def resolve_shared(registry: Registry, workflow: str, shared: dict[str, str],
                   ) -> dict[str, ModelVersion]:
    """node -> the registered model version it names; a 400 naming every missing one."""
    found: dict[str, ModelVersion] = {}
    missing = []
    for node, ref in shared.items():
        name, _, version = ref.partition("/")
        try:
            mv = registry.get(name, version or None)
        except DagserveError as exc:
            missing.append(f"node '{node}': model: {ref}: {exc.message}")
            continue
        if mv.owner is not None:  # it goes when its workflow goes
            missing.append(f"node '{node}': model: {ref} is a node of workflow {mv.owner}, "
                           "not a model of its own")
            continue
        found[node] = mv
    if missing:
        raise BadRequestError(f"Workflow {workflow} uses models that are not registered at "
                              f"/models (register them first): {'; '.join(missing)}")
    return found


def workflows_using(registry: Registry, mv: ModelVersion) -> list[str]:
    """Every workflow version whose ``model:`` nodes use ``mv``, as ``name/version``."""
    return sorted(f"{e.name}/{e.version}" for e in registry.all_workflow_versions()
                  if any(used is mv for used in e.shared.values()))
