"""The manifests inside archives: ``MAR-INF/MANIFEST.json`` and ``WAR-INF/MANIFEST.json``.

The writer reproduces torch-model-archiver / torch-workflow-archiver 0.12.0 byte for byte:
``json.dumps(manifest, indent=2)``, no trailing newline, the same key order, optional keys
left out when empty.  The readers accept what TorchServe's frontend accepts: only the
name, the version and the runtime matter, unknown keys are ignored, ``createdOn`` and
``archiverVersion`` may be missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dagserve.archiver.errors import ArchiveError

# The torch-model-archiver release whose output we reproduce; TorchServe only logs a
# warning when this is missing, but users' tooling sometimes reads it.
ARCHIVER_VERSION = "0.12.0"

MODEL_MANIFEST_PATH = "MAR-INF/MANIFEST.json"
WORKFLOW_MANIFEST_PATH = "WAR-INF/MANIFEST.json"
CREATED_ON_FORMAT = "%d/%m/%Y %H:%M:%S"
DEFAULT_MODEL_VERSION = "1.0"
DEFAULT_RUNTIME = "python"
# Runtimes TorchServe's frontend accepts in a manifest (all run Python handlers).
RUNTIMES = ("python", "python2", "python3")


def format_created_on(when: datetime | None = None) -> str:
    """``createdOn`` as TorchServe writes it: local time, ``dd/mm/YYYY HH:MM:SS``."""
    return (when or datetime.now()).strftime(CREATED_ON_FORMAT)


@dataclass(frozen=True)
class ModelManifest:
    """The content of ``MAR-INF/MANIFEST.json``.

    File fields hold base names (files sit flat at the archive root).  ``None`` or an
    empty string means "absent" and the key is left out when written.
    """

    model_name: str
    model_version: str = DEFAULT_MODEL_VERSION
    handler: str | None = None
    runtime: str = DEFAULT_RUNTIME
    serialized_file: str | None = None
    model_file: str | None = None
    requirements_file: str | None = None
    config_file: str | None = None
    created_on: str | None = None
    archiver_version: str | None = ARCHIVER_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a dict in TorchServe's key order."""
        model: dict[str, Any] = {"modelName": self.model_name}
        if self.serialized_file:
            model["serializedFile"] = self.serialized_file
        if self.handler is not None:
            model["handler"] = self.handler
        if self.model_file:
            model["modelFile"] = self.model_file
        if self.model_version:
            model["modelVersion"] = self.model_version
        if self.requirements_file:
            model["requirementsFile"] = self.requirements_file
        if self.config_file:
            model["configFile"] = self.config_file
        data: dict[str, Any] = {}
        if self.created_on:
            data["createdOn"] = self.created_on
        data["runtime"] = self.runtime
        data["model"] = model
        if self.archiver_version:
            data["archiverVersion"] = self.archiver_version
        return data

    def to_json(self) -> str:
        """The exact text written to the archive (no trailing newline)."""
        return json.dumps(self.to_dict(), indent=2)


@dataclass(frozen=True)
class WorkflowManifest:
    """The content of ``WAR-INF/MANIFEST.json``."""

    workflow_name: str
    spec_file: str
    handler: str
    created_on: str | None = None
    archiver_version: str | None = ARCHIVER_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a dict in TorchServe's key order."""
        data: dict[str, Any] = {}
        if self.created_on:
            data["createdOn"] = self.created_on
        data["workflow"] = {
            "workflowName": self.workflow_name,
            "specFile": self.spec_file,
            "handler": self.handler,
        }
        if self.archiver_version:
            data["archiverVersion"] = self.archiver_version
        return data

    def to_json(self) -> str:
        """The exact text written to the archive (no trailing newline)."""
        return json.dumps(self.to_dict(), indent=2)


ManifestSource = str | os.PathLike[str] | Mapping[str, Any]


def read_model_manifest(source: ManifestSource) -> ModelManifest:
    """Read a model manifest from a model directory, a MANIFEST.json file, or a parsed dict.

    Raises ArchiveError when the manifest is missing, not JSON, or lacks a model name.
    """
    data, where = _load(source, MODEL_MANIFEST_PATH)
    model = data.get("model")
    if not isinstance(model, Mapping):
        raise ArchiveError(f"{where}: missing \"model\" object")
    name = _text(model, "modelName", where)
    if not name:
        raise ArchiveError(f"{where}: model name is not defined (model.modelName)")
    if "runtime" in data:
        runtime = _text(data, "runtime", where)
        if runtime not in RUNTIMES:
            raise ArchiveError(
                f"{where}: runtime {runtime!r} is not supported (expected one of {', '.join(RUNTIMES)})"
            )
    else:
        runtime = DEFAULT_RUNTIME
    return ModelManifest(
        model_name=name,
        model_version=_text(model, "modelVersion", where) or DEFAULT_MODEL_VERSION,
        handler=_text(model, "handler", where),
        runtime=runtime,
        serialized_file=_text(model, "serializedFile", where),
        model_file=_text(model, "modelFile", where),
        requirements_file=_text(model, "requirementsFile", where),
        config_file=_text(model, "configFile", where),
        created_on=_text(data, "createdOn", where),
        archiver_version=_text(data, "archiverVersion", where),
    )


def read_workflow_manifest(source: ManifestSource) -> WorkflowManifest:
    """Read a workflow manifest from a workflow directory, a MANIFEST.json file, or a dict.

    Raises ArchiveError when the manifest is missing, not JSON, or lacks the workflow name,
    spec file or handler (a workflow cannot load without them).
    """
    data, where = _load(source, WORKFLOW_MANIFEST_PATH)
    workflow = data.get("workflow")
    if not isinstance(workflow, Mapping):
        raise ArchiveError(f"{where}: missing \"workflow\" object")
    fields = {}
    for key in ("workflowName", "specFile", "handler"):
        value = _text(workflow, key, where)
        if not value:
            raise ArchiveError(f"{where}: workflow.{key} is not defined")
        fields[key] = value
    return WorkflowManifest(
        workflow_name=fields["workflowName"],
        spec_file=fields["specFile"],
        handler=fields["handler"],
        created_on=_text(data, "createdOn", where),
        archiver_version=_text(data, "archiverVersion", where),
    )


def read_manifest_data(directory: str | Path) -> dict[str, Any]:
    """The manifest of an unpacked archive as its JSON object (MAR-INF, else WAR-INF), or
    ``{}`` when it has none: what a worker hands its handler as ``context.manifest``."""
    for inner in (MODEL_MANIFEST_PATH, WORKFLOW_MANIFEST_PATH):
        if (Path(directory) / inner).is_file():
            return dict(_load(Path(directory) / inner, inner)[0])
    return {}


def _load(source: ManifestSource, inner_path: str) -> tuple[Mapping[str, Any], str]:
    """Return the manifest object and a label naming where it came from."""
    if isinstance(source, Mapping):
        return source, "manifest"
    path = Path(source)
    if path.is_dir():
        path = path / inner_path
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ArchiveError(f"{where}: manifest not found (not a {_kind(inner_path)} archive?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{where}: cannot read manifest: {exc}") from None
    try:
        # Numbers are kept as their literal text, as TorchServe's Gson reads them into strings.
        data = json.loads(text, parse_int=str, parse_float=str, parse_constant=str)
    except json.JSONDecodeError as exc:
        raise ArchiveError(
            f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, Mapping):
        raise ArchiveError(f"{where}: manifest must be a JSON object")
    return data, where


def _kind(inner_path: str) -> str:
    return "model" if inner_path == MODEL_MANIFEST_PATH else "workflow"


def _text(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    """A string field: missing or null -> None; numbers -> their text; else an error."""
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ArchiveError(f"{where}: {key} must be a string, not {type(value).__name__}")
