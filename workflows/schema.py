"""The spec's JSON Schema (schema.json): loading it, and turning its errors into Problems.

The schema is the single source of the six global settings, their defaults and their
minimums; the rest of the package reads them from here.
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from .errors import Problem
from .yaml_marks import LocatedDocument, Path

MODELS = "models"
DAG = "dag"
NODES = "nodes"
WORKFLOW = "workflow"
URL = "url"
SHARED = "model"  # under a model: a registered model the node shares


@cache
def schema() -> dict[str, Any]:
    """The parsed schema.json shipped inside the package."""
    text = resources.files(__package__).joinpath("schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    Draft202012Validator.check_schema(loaded)
    return loaded


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


def _resolve(subschema: dict[str, Any]) -> dict[str, Any]:
    ref = subschema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        return schema()["$defs"][ref.removeprefix("#/$defs/")]
    return subschema


@cache
def setting_schemas() -> dict[str, dict[str, Any]]:
    """The six global settings (spec key -> resolved subschema), in the schema's order."""
    props = schema()["$defs"]["models"]["properties"]
    return {key: _resolve(sub) for key, sub in props.items()}


def setting_defaults() -> dict[str, int]:
    return {key: int(sub["default"]) for key, sub in setting_schemas().items()}


def model_keys() -> list[str]:
    return list(schema()["$defs"]["model"]["properties"])


def node_keys() -> list[str]:
    """The keys a node may have under ``nodes:``."""
    return list(schema()["$defs"]["node"]["properties"])


def workflow_keys() -> list[str]:
    return list(schema()["$defs"]["workflow"]["properties"])


def validate(doc: LocatedDocument) -> list[Problem]:
    """Every schema violation in ``doc.data``, each as a located Problem."""
    problems: list[Problem] = []
    for err in _validator().iter_errors(doc.data):
        problems.extend(_translate(err, doc))
    return list(dict.fromkeys(problems))  # e.g. each 'required' error names all missing keys


# -- turning jsonschema errors into readable problems ---------------------------------------

def describe(value: Any) -> str:
    """A short rendering of a YAML value for messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (str, int, float)):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value!r} (a {type(value).__name__})"


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def share_workers_problem(value: Any) -> str:
    """``share-workers`` (under ``workflow:`` or on a model) that is not a boolean."""
    return f"share-workers must be true or false, got {describe(value)}"


def _setting_rule(sub: dict[str, Any]) -> str:
    return f"must be an integer >= {sub.get('minimum', 0)}"


def _translate(err: ValidationError, doc: LocatedDocument) -> Iterator[Problem]:
    path: Path = tuple(err.absolute_path)
    kind = err.validator
    if not path:
        yield from _root_problems(err, doc)
    elif path[0] == MODELS:
        yield from _models_problems(err, doc, path)
    elif path[0] == DAG:
        yield from _dag_problems(err, doc, path)
    elif path[0] in (NODES, WORKFLOW):
        from .node_schema import flow_problems  # the new sections' messages live there

        yield from flow_problems(err, doc, path)
    else:  # the schema constrains nothing else; keep jsonschema's words rather than lose one
        yield doc.problem(path, f"{'.'.join(map(str, path))}: {err.message} ({kind})")


def _root_problems(err: ValidationError, doc: LocatedDocument) -> Iterator[Problem]:
    if err.validator == "type":
        yield doc.problem((), "a workflow spec must be a YAML mapping with 'models:' and 'dag:' "
                              f"sections, got {describe(err.instance)}")
    elif err.validator == "required":
        present = list(err.instance)
        for section in err.validator_value:
            if section in err.instance:
                continue
            others = [str(k) for k in present if k not in err.validator_value]
            close = difflib.get_close_matches(section, others, n=1, cutoff=0.6)
            hint = f" (is '{close[0]}:' meant to be '{section}:'?)" if close else ""
            yield doc.problem((), f"missing '{section}:' section{hint}")
    else:
        yield doc.problem((), err.message)


def _models_problems(err: ValidationError, doc: LocatedDocument,
                     path: Path) -> Iterator[Problem]:
    settings = setting_schemas()
    kind = err.validator
    if len(path) == 1:
        if kind == "type":
            yield doc.problem(path, "'models:' must be a mapping of global settings and models, "
                                    f"got {describe(err.instance)}")
        elif kind == "pattern":  # propertyNames: err.instance is the offending key
            yield doc.problem(path + (err.instance,),
                              f"model name '{err.instance}' is not valid: use letters, digits, "
                              "'_', '-' and '.', starting with a letter or a digit")
        else:
            yield doc.problem(path, f"models: {err.message}")
        return

    name = str(path[1])
    if len(path) == 2 and name in settings:
        yield doc.problem(path, f"{name} {_setting_rule(settings[name])}, "
                                f"got {describe(err.instance)}")
    elif len(path) == 2:
        yield from _model_entry_problems(err, doc, path, name)
    elif len(path) == 3 and path[2] in settings:
        yield doc.problem(path, f"{path[2]} {_setting_rule(settings[str(path[2])])}, "
                                f"got {describe(err.instance)}", node=name)
    elif len(path) == 3 and path[2] == URL:
        yield doc.problem(path, "url must be a non-empty string (a file name in the model "
                                f"store, or a URL), got {describe(err.instance)}", node=name)
    elif len(path) == 3 and path[2] == "share-workers":
        yield doc.problem(path, share_workers_problem(err.instance), node=name)
    else:
        yield doc.problem(path, err.message, node=name)


def _model_entry_problems(err: ValidationError, doc: LocatedDocument, path: Path,
                          name: str) -> Iterator[Problem]:
    value = err.instance
    globals_ = list(setting_schemas())
    if err.validator == "type" and value is not None and not isinstance(value, (list, dict)):
        if isinstance(value, str) and ("." in value or "/" in value):
            hint = f"; a model is written '{name}: {{url: {value}}}'"
        else:
            hint = _suggest(name, globals_) or f" (the global settings are {', '.join(globals_)})"
        yield doc.problem(path, f"unknown global setting '{name}'{hint}")
    elif err.validator == "type":
        yield doc.problem(path, f"a model must be a mapping with a url, got {describe(value)}",
                          node=name)
    elif err.validator == "required":
        yield doc.problem(path, "model has no url (the .mar file name in the model store, "
                                "or a URL) and no 'model:' (a registered model to share)",
                          node=name)
    elif err.validator == "additionalProperties":
        allowed = model_keys()
        for key in value:
            if key not in allowed:
                hint = _suggest(key, allowed) or f" (allowed: {', '.join(allowed)})"
                yield doc.problem(path + (key,), f"unknown key '{key}' in a model{hint}",
                                  node=name)
    else:
        yield doc.problem(path, err.message, node=name)


def _dag_problems(err: ValidationError, doc: LocatedDocument,
                  path: Path) -> Iterator[Problem]:
    kind = err.validator
    if len(path) == 1:
        if kind == "type":
            yield doc.problem(path, "'dag:' must be a mapping 'node: [children]', "
                                    f"got {describe(err.instance)}")
        elif kind == "minProperties":
            yield doc.problem(path, "'dag:' is empty: it needs at least one node")
        elif kind == "minLength":  # propertyNames: err.instance is the key
            yield doc.problem(path + (err.instance,), "a node name must not be empty")
        else:
            yield doc.problem(path, f"dag: {err.message}")
        return
    node = str(path[1]) or None
    if len(path) == 2:
        value = err.instance
        hint = f": write '{node}: [{value}]'" if isinstance(value, str) else ""
        yield doc.problem(path, f"children must be a list of node names, "
                                f"got {describe(value)}{hint}", node=node)
    elif len(path) == 3 and kind == "minLength":
        yield doc.problem(path, "a child's name must not be empty", node=node)
    elif len(path) == 3:
        value = err.instance
        hint = ": quote the name" if isinstance(value, (int, float, bool)) else ""
        yield doc.problem(path, f"a child must be a node name, got {describe(value)}{hint}",
                          node=node)
    else:
        yield doc.problem(path, err.message, node=node)
