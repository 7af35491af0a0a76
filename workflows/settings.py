"""Effective settings of each node: schema defaults <- globals under ``models:`` <- overrides.

Globals apply wherever they stand in ``models:`` (before or after the models). When
``max-workers`` is given nowhere for a node it is raised to that node's ``min-workers``, so
``min-workers: 4`` alone means four workers; a ``max-workers`` that is given and is below
``min-workers`` is an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .compiled import SPEC_KEYS, ModelSpec, NodeSettings
from .errors import Problem
from .schema import MODELS, URL, setting_defaults, setting_schemas
from .yaml_marks import LocatedDocument, Path

MIN, MAX = "min-workers", "max-workers"

if list(SPEC_KEYS) != list(setting_schemas()):  # pragma: no cover - a packaging mistake
    raise ImportError("workflows/schema.json and dagserve.workflows.compiled.SPEC_KEYS disagree")


@dataclass
class ResolvedSettings:
    global_settings: NodeSettings
    models: dict[str, ModelSpec] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _valid_values(mapping: dict[str, Any]) -> dict[str, int]:
    """The settings in ``mapping`` that the schema accepts (the others are already reported)."""
    written: dict[str, int] = {}
    for key, sub in setting_schemas().items():
        value = mapping.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if float(value).is_integer() and value >= sub.get("minimum", 0):
            written[key] = int(value)
    return written


def _node_settings(values: dict[str, int]) -> NodeSettings:
    return NodeSettings(**{SPEC_KEYS[key]: value for key, value in values.items()})


def resolve(models_section: Any, doc: LocatedDocument) -> ResolvedSettings:
    """Global settings and every well-formed model's effective settings, with conflicts."""
    section: dict[str, Any] = models_section if isinstance(models_section, dict) else {}
    problems: list[Problem] = []
    globals_written = _valid_values(section)
    merged = setting_defaults() | globals_written
    if MAX not in globals_written:
        merged[MAX] = max(merged[MAX], merged[MIN])
    elif merged[MIN] > merged[MAX]:
        problems.append(doc.problem((MODELS, MAX), _conflict(merged)))
    result = ResolvedSettings(global_settings=_node_settings(merged), problems=problems)

    for name, value in section.items():
        if name in SPEC_KEYS or not isinstance(value, dict):
            continue
        overrides = _valid_values(value)
        merged = setting_defaults() | globals_written | overrides
        if MAX not in globals_written and MAX not in overrides:
            merged[MAX] = max(merged[MAX], merged[MIN])
        elif merged[MIN] > merged[MAX] and (MIN in overrides or MAX in overrides):
            at: Path = (MODELS, name, MAX if MAX in overrides else MIN)
            problems.append(doc.problem(at, _conflict(merged), node=name))
        url = value.get(URL)
        position = doc.position((MODELS, name))
        result.models[name] = ModelSpec(
            name=name,
            url=url if isinstance(url, str) else "",
            settings=_node_settings(merged),
            overrides=dict(overrides),
            line=position[0] if position else None,
            keeps_own_workers=value.get("share-workers") is False,
        )
    return result


def _conflict(merged: dict[str, int]) -> str:
    return (f"min-workers ({merged[MIN]}) is greater than max-workers ({merged[MAX]}): "
            "raise max-workers or lower min-workers")
