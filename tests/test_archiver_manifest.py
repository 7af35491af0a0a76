"""Manifests: TorchServe 0.12.0's exact bytes, and readers as lenient as TorchServe's."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from dagserve.archiver import (
    ARCHIVER_VERSION,
    ArchiveError,
    ModelManifest,
    WorkflowManifest,
    format_created_on,
    read_model_manifest,
    read_workflow_manifest,
)

FULL_MODEL_MANIFEST = """{
  "createdOn": "03/02/2024 04:05:06",
  "runtime": "python",
  "model": {
    "modelName": "resnet-18",
    "serializedFile": "resnet18.pth",
    "handler": "my_handler.py:handle",
    "modelFile": "model.py",
    "modelVersion": "1.0",
    "requirementsFile": "requirements.txt",
    "configFile": "model-config.yaml"
  },
  "archiverVersion": "0.12.0"
}"""

MINIMAL_MODEL_MANIFEST = """{
  "createdOn": "31/12/2023 23:59:59",
  "runtime": "python",
  "model": {
    "modelName": "echo",
    "handler": "base_handler",
    "modelVersion": "2.0"
  },
  "archiverVersion": "0.12.0"
}"""

WORKFLOW_MANIFEST = """{
  "createdOn": "01/01/2024 00:00:00",
  "workflow": {
    "workflowName": "dog_breed",
    "specFile": "workflow.yaml",
    "handler": "workflow_handler.py"
  },
  "archiverVersion": "0.12.0"
}"""


def test_model_manifest_bytes_match_torchserve_with_every_field():
    manifest = ModelManifest(
        model_name="resnet-18",
        model_version="1.0",
        handler="my_handler.py:handle",
        serialized_file="resnet18.pth",
        model_file="model.py",
        requirements_file="requirements.txt",
        config_file="model-config.yaml",
        created_on="03/02/2024 04:05:06",
    )
    assert manifest.to_json() == FULL_MODEL_MANIFEST
    assert not manifest.to_json().endswith("\n")


def test_model_manifest_leaves_out_empty_optional_keys():
    manifest = ModelManifest(
        model_name="echo", model_version="2.0", handler="base_handler",
        serialized_file="", model_file=None, created_on="31/12/2023 23:59:59",
    )
    assert manifest.to_json() == MINIMAL_MODEL_MANIFEST


def test_workflow_manifest_bytes_match_torchserve():
    manifest = WorkflowManifest(
        workflow_name="dog_breed", spec_file="workflow.yaml", handler="workflow_handler.py",
        created_on="01/01/2024 00:00:00",
    )
    assert manifest.to_json() == WORKFLOW_MANIFEST


def test_archiver_version_is_torchserves():
    assert ARCHIVER_VERSION == "0.12.0"


def test_created_on_format():
    assert format_created_on(datetime(2024, 2, 3, 4, 5, 6)) == "03/02/2024 04:05:06"
    assert re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d", format_created_on())


def test_read_model_manifest_from_dir_file_and_dict(tmp_path: Path):
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(FULL_MODEL_MANIFEST)
    expected = ModelManifest(
        model_name="resnet-18", model_version="1.0", handler="my_handler.py:handle",
        serialized_file="resnet18.pth", model_file="model.py",
        requirements_file="requirements.txt", config_file="model-config.yaml",
        created_on="03/02/2024 04:05:06", archiver_version="0.12.0",
    )
    assert read_model_manifest(tmp_path) == expected
    assert read_model_manifest(str(tmp_path / "MAR-INF" / "MANIFEST.json")) == expected
    assert read_model_manifest(json.loads(FULL_MODEL_MANIFEST)) == expected


def test_read_model_manifest_round_trips_writer_output():
    manifest = ModelManifest(model_name="m", model_version="3", handler="h.py", created_on="01/01/2024 00:00:00")
    assert read_model_manifest(json.loads(manifest.to_json())) == manifest


def test_old_manifest_without_created_on_version_runtime_loads():
    manifest = read_model_manifest({"model": {"modelName": "legacy", "handler": "h.py"}})
    assert manifest.model_name == "legacy"
    assert manifest.model_version == "1.0"
    assert manifest.runtime == "python"
    assert manifest.created_on is None
    assert manifest.archiver_version is None


def test_unknown_keys_are_ignored():
    manifest = read_model_manifest({
        "specificationVersion": "1.0", "implementationVersion": "1.0", "modelServerVersion": "1.0",
        "license": "Apache", "engine": {"engineName": "PyTorch"}, "runtime": "python3",
        "model": {"modelName": "x", "modelVersion": "4.2", "description": "d", "extensions": {}},
    })
    assert (manifest.model_name, manifest.model_version, manifest.runtime) == ("x", "4.2", "python3")


def test_numeric_version_keeps_its_literal_text(tmp_path: Path):
    path = tmp_path / "MANIFEST.json"
    path.write_text('{"model": {"modelName": "x", "modelVersion": 1.10}}')
    assert read_model_manifest(path).model_version == "1.10"
    assert read_model_manifest({"model": {"modelName": "x", "modelVersion": 2}}).model_version == "2"


def test_utf8_bom_is_accepted(tmp_path: Path):
    path = tmp_path / "MANIFEST.json"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL_MODEL_MANIFEST.encode())
    assert read_model_manifest(path).model_name == "echo"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, 'missing "model" object'),
        ({"model": "x"}, 'missing "model" object'),
        ({"model": {}}, "model name is not defined"),
        ({"model": {"modelName": ""}}, "model name is not defined"),
        ({"model": {"modelName": ["a"]}}, "modelName must be a string"),
        ({"runtime": "lsp", "model": {"modelName": "x"}}, "runtime 'lsp' is not supported"),
        ({"runtime": None, "model": {"modelName": "x"}}, "runtime None is not supported"),
        ({"model": {"modelName": "x", "modelVersion": True}}, "modelVersion must be a string"),
    ],
)
def test_invalid_model_manifest(data, message):
    with pytest.raises(ArchiveError, match=re.escape(message)):
        read_model_manifest(data)


def test_missing_manifest_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ArchiveError, match=r"MAR-INF/MANIFEST\.json: manifest not found"):
        read_model_manifest(tmp_path)
    with pytest.raises(ArchiveError, match=r"WAR-INF/MANIFEST\.json: manifest not found"):
        read_workflow_manifest(tmp_path)


def test_invalid_json_names_line_and_column(tmp_path: Path):
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text('{\n  "model": {,}\n}')
    with pytest.raises(ArchiveError, match=r"invalid JSON at line 2 column 13"):
        read_model_manifest(tmp_path)


def test_manifest_that_is_not_an_object(tmp_path: Path):
    path = tmp_path / "MANIFEST.json"
    path.write_text("[1, 2]")
    with pytest.raises(ArchiveError, match="must be a JSON object"):
        read_model_manifest(path)


def test_read_workflow_manifest(tmp_path: Path):
    (tmp_path / "WAR-INF").mkdir()
    (tmp_path / "WAR-INF" / "MANIFEST.json").write_text(WORKFLOW_MANIFEST)
    assert read_workflow_manifest(tmp_path) == WorkflowManifest(
        workflow_name="dog_breed", spec_file="workflow.yaml", handler="workflow_handler.py",
        created_on="01/01/2024 00:00:00", archiver_version="0.12.0",
    )
    lenient = read_workflow_manifest(
        {"workflow": {"workflowName": "w", "specFile": "s.yaml", "handler": "h.py", "extra": 1}}
    )
    assert lenient.created_on is None and lenient.workflow_name == "w"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": {"modelName": "x"}}, 'missing "workflow" object'),
        ({"workflow": {"specFile": "s", "handler": "h"}}, "workflow.workflowName is not defined"),
        ({"workflow": {"workflowName": "w", "handler": "h"}}, "workflow.specFile is not defined"),
        ({"workflow": {"workflowName": "w", "specFile": "s"}}, "workflow.handler is not defined"),
    ],
)
def test_invalid_workflow_manifest(data, message):
    with pytest.raises(ArchiveError, match=re.escape(message)):
        read_workflow_manifest(data)
