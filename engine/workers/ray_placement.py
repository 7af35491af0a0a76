"""Where and with what a model's Ray actors run: the ``ray:`` options of one model.

They come from the ``ray`` entry of the model's version in the ``models`` key of
config.properties, then key by key over it the ``ray:`` section of the model's
``model-config.yaml``, then the registration's ``ray`` parameter (``POST /models?ray=<JSON
object>``): the precedence of the other per-model settings. E.g.::

    ray:
      num_cpus: 0.5                    # Ray logical CPUs per worker (default 1)
      num_gpus: 1                      # GPUs per worker (default 0); the handler sees cuda:0
      resources: {node_b: 1}           # custom resources a node was started with
      label_selector: {zone: eu-1}     # node labels (``ray start --labels zone=eu-1``)
      runtime_env: {env_vars: {A: "1"}}  # passed to Ray as is

Nothing here imports Ray: a registration with bad options is a 400 whether or not a
cluster is configured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import BadRequestError

KEYS = ("num_cpus", "num_gpus", "resources", "label_selector", "runtime_env")


@dataclass(frozen=True)
class RayPlacement:
    """The Ray options of one model's workers."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    label_selector: dict[str, str] = field(default_factory=dict)
    runtime_env: dict[str, Any] = field(default_factory=dict)

    def actor_options(self) -> dict[str, Any]:
        """Keyword arguments for ``ActorClass.options``. Ray never restarts or retries
        these actors: the pool restarts a dead worker itself, with backoff."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                   "max_restarts": 0, "max_task_retries": 0}
        if self.resources:
            options["resources"] = dict(self.resources)
        if self.label_selector:
            options["label_selector"] = dict(self.label_selector)
        if self.runtime_env:
            options["runtime_env"] = dict(self.runtime_env)
        return options

    def threads(self) -> int:
        """torch threads of a CPU worker: its whole CPUs, at least one."""
        return max(1, int(self.num_cpus))


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BadRequestError(f"{where}: ray.{key} must be a number >= 0, got {value!r}")
    return float(value)


def _mapping(where: str, key: str, value: Any, kind: type) -> dict:
    if not isinstance(value, Mapping):
        raise BadRequestError(f"{where}: ray.{key} must be a mapping, got {value!r}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise BadRequestError(f"{where}: ray.{key} has a key that is not a name: {k!r}")
        if kind is float:
            out[k] = _number(where, f"{key}.{k}", v)
        elif kind is str:
            if not isinstance(v, str):
                raise BadRequestError(f"{where}: ray.{key}.{k} must be a string, got {v!r}")
            out[k] = v
        else:
            out[k] = v
    return out


def _section(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadRequestError(f"{where}: ray must be a mapping of "
                              f"{', '.join(KEYS)}, got {value!r}")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise BadRequestError(f"{where}: unknown ray option(s) {', '.join(map(str, unknown))}; "
                              f"known: {', '.join(KEYS)}")
    return dict(value)


def ray_param(text: str | None) -> dict[str, Any] | None:
    """The ``ray`` registration parameter: a JSON object (checked fully by ray_placement)."""
    if text is None or text == "":
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadRequestError(f"Parameter ray must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequestError(f"Parameter ray must be a JSON object, got {text!r}")
    return value


def ray_placement(model_config: Mapping[str, Any], properties: Mapping[str, Any],
                  model: str, registration: Mapping[str, Any] | None = None) -> RayPlacement:
    """The placement of ``model``: the ``ray`` entry of its config.properties ``models``
    settings, overridden key by key by its model-config ``ray:`` section, then by the
    registration's; raises BadRequestError naming the model and the key."""
    merged = _section(f"model {model} (config.properties models)", properties.get("ray"))
    merged.update(_section(f"model {model} (model-config.yaml)", model_config.get("ray")))
    merged.update(_section(f"model {model} (registration)", registration))
    where = f"model {model}"
    kwargs: dict[str, Any] = {}
    for key in ("num_cpus", "num_gpus"):
        if key in merged:
            kwargs[key] = _number(where, key, merged[key])
    if "resources" in merged:
        kwargs["resources"] = _mapping(where, "resources", merged["resources"], float)
    if "label_selector" in merged:
        kwargs["label_selector"] = _mapping(where, "label_selector", merged["label_selector"], str)
    if "runtime_env" in merged:
        kwargs["runtime_env"] = _mapping(where, "runtime_env", merged["runtime_env"], object)
    return RayPlacement(**kwargs)
