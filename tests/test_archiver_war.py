"""Workflow archives: workflow-archiver's flags, .war layout, and spec validation before writing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from dagserve.archiver import ArchiveError, pack_workflow, read_workflow_manifest
from dagserve.archiver.workflow_cli import main

REPO = Path(__file__).resolve().parents[1]
CREATED_ON = re.compile(r'"createdOn": "\d\d/\d\d/\d{4} \d\d:\d\d:\d\d"')

SPEC = """models:
  min-workers: 1
  batch-size: 4
  preprocess_model:
    url: pre.mar
dag:
  pre_processing: [preprocess_model]
"""

EXPECTED_MANIFEST = """{
  "createdOn": "<time>",
  "workflow": {
    "workflowName": "my_wf",
    "specFile": "workflow.yaml",
    "handler": "wf_handler.py"
  },
  "archiverVersion": "0.12.0"
}"""


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "assets" / "nested").mkdir(parents=True)
    (root / "assets" / ".venv").mkdir()
    (root / "assets" / "__pycache__").mkdir()
    (root / "workflow.yaml").write_text(SPEC)
    (root / "wf_handler.py").write_text("def pre_processing(data, context):\n    return data\n")
    (root / "labels.json").write_text('{"0": "dog"}')
    (root / "assets" / ".keep").write_text("kept")
    (root / "assets" / "nested" / "table.csv").write_text("a,b\n")
    (root / "assets" / ".venv" / "x").write_text("skipped")
    (root / "assets" / "__pycache__" / "y.pyc").write_text("skipped")
    return root


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


@pytest.fixture()
def fake_workflows(monkeypatch):
    """A stand-in for ``dagserve.workflows`` whose validator rejects specs containing 'BAD'."""
    module = types.ModuleType("fake_workflows")
    calls: list[Path] = []

    class SpecError(Exception):
        pass

    def validate_spec_file(path):
        calls.append(Path(path))
        text = Path(path).read_text()
        if "BAD" in text:
            raise SpecError(f"{path}:2:3: node 'x': first problem\n{path}:5:1: second problem")
        if "UNREADABLE" in text:
            raise PermissionError(13, "Permission denied")

    module.SpecError = SpecError
    module.validate_spec_file = validate_spec_file
    module.calls = calls
    monkeypatch.setattr("dagserve.workflows.validate_spec_file", validate_spec_file)
    monkeypatch.setattr("dagserve.workflows.SpecError", SpecError)
    return module


def args_for(src: Path, out: Path, *more: str) -> list[str]:
    return [
        "--workflow-name", "my_wf",
        "--spec-file", str(src / "workflow.yaml"),
        "--handler", str(src / "wf_handler.py"),
        "--export-path", str(out),
        "--extra-files", f"{src / 'labels.json'},{src / 'assets'}",
        *more,
    ]


def war_contents(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        assert not any(info.is_dir() for info in zf.infolist())
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in zf.infolist())
        return {info.filename: zf.read(info) for info in zf.infolist()}


def test_war_layout_and_manifest(src: Path, out: Path, fake_workflows):
    assert main(args_for(src, out)) == 0
    assert os.listdir(out) == ["my_wf.war"]
    contents = war_contents(out / "my_wf.war")
    manifest = contents.pop("WAR-INF/MANIFEST.json").decode()
    assert len(CREATED_ON.findall(manifest)) == 1
    assert CREATED_ON.sub('"createdOn": "<time>"', manifest) == EXPECTED_MANIFEST
    assert contents == {
        "workflow.yaml": SPEC.encode(),
        "wf_handler.py": (src / "wf_handler.py").read_bytes(),
        "labels.json": b'{"0": "dog"}',
        ".keep": b"kept",
        "nested/table.csv": b"a,b\n",
    }
    assert fake_workflows.calls == [src / "workflow.yaml"]


def test_pack_workflow_api_and_reader(src: Path, out: Path):
    path = pack_workflow(workflow_name="w.1", spec_file=src / "workflow.yaml", handler=src / "wf_handler.py",
                         export_path=out)
    assert path == out / "w.1.war"
    manifest = read_workflow_manifest(json.loads(war_contents(path)["WAR-INF/MANIFEST.json"]))
    assert (manifest.workflow_name, manifest.spec_file, manifest.handler) == ("w.1", "workflow.yaml", "wf_handler.py")


def test_validate_hook_runs_before_writing(src: Path, out: Path):
    def reject(path: Path) -> None:
        raise ValueError(f"rejected {path.name}")

    with pytest.raises(ValueError, match="rejected workflow.yaml"):
        pack_workflow(workflow_name="w", spec_file=src / "workflow.yaml", handler=src / "wf_handler.py",
                      export_path=out, validate_spec=reject)
    assert os.listdir(out) == []


def test_default_export_path_and_force(src: Path, tmp_path: Path, monkeypatch, capsys, fake_workflows):
    monkeypatch.chdir(tmp_path)
    base = ["--workflow-name", "wf", "--spec-file", str(src / "workflow.yaml"), "--handler", str(src / "wf_handler.py")]
    assert main(base) == 0
    assert (tmp_path / "wf.war").is_file()
    first = (tmp_path / "wf.war").read_bytes()
    capsys.readouterr()

    assert main(base) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err
    assert (tmp_path / "wf.war").read_bytes() == first

    assert main([*base, "--extra-files", str(src / "labels.json"), "-f"]) == 0
    assert "labels.json" in war_contents(tmp_path / "wf.war")
    assert main([*base, "--force"]) == 0
    assert "labels.json" not in war_contents(tmp_path / "wf.war")


def test_spec_error_is_printed_and_nothing_written(src: Path, out: Path, capsys, fake_workflows):
    (src / "workflow.yaml").write_text("models:\n  BAD\n")
    assert main(args_for(src, out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("workflow-archiver: error: ")
    assert ":2:3: node 'x': first problem" in err and ":5:1: second problem" in err
    assert os.listdir(out) == []


def test_validator_os_error_is_one_line(src: Path, out: Path, capsys, fake_workflows):
    (src / "workflow.yaml").write_text("UNREADABLE\n")
    assert main(args_for(src, out)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read spec file" in err and "Permission denied" in err
    assert os.listdir(out) == []


def test_an_unrelated_workflows_package_does_not_change_validation(tmp_path: Path, src: Path,
                                                                    out: Path, monkeypatch, capsys):
    """Another project's top-level ``workflows`` package (LlamaIndex ships one) is not ours:
    the real validator still runs and still refuses a self loop."""
    pkg = tmp_path / "shadow" / "workflows"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("def validate_spec_file(path):\n    pass\n")
    monkeypatch.delitem(sys.modules, "workflows", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "shadow"))
    (src / "workflow.yaml").write_text("models:\n  m:\n    url: m.mar\ndag:\n  m: [m]\n")
    assert main(args_for(src, out)) == 1
    assert "self" in capsys.readouterr().err.lower()
    assert os.listdir(out) == []


def test_real_workflows_validator(src: Path, out: Path, capsys):
    assert main(args_for(src, out)) == 0
    (out / "my_wf.war").unlink()
    (src / "workflow.yaml").write_text("models:\n  m:\n    url: m.mar\ndag:\n  m: [m]\n")  # a self loop
    assert main(args_for(src, out)) == 1
    assert capsys.readouterr().err.startswith("workflow-archiver: error: ")
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--workflow-name", "_bad"), "invalid workflow name '_bad'"),
        (("--spec-file", "/no/such/spec.yaml"), "spec file not found: /no/such/spec.yaml"),
        (("--handler", "/no/such/h.py"), "workflow handler file not found: /no/such/h.py"),
        (("--extra-files", "/no/such/extra"), "extra file not found: /no/such/extra"),
        (("--export-path", "/no/such/dir"), "export path is not a directory: /no/such/dir"),
    ],
)
def test_bad_input_exits_1_with_one_line(change, message, src: Path, out: Path, capsys, fake_workflows):
    args = args_for(src, out)
    args[args.index(change[0]) + 1] = change[1]
    assert main(args) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and len(lines) == 1
    assert lines[0].startswith("workflow-archiver: error: ") and message in lines[0]
    assert os.listdir(out) == []
    assert fake_workflows.calls == []  # inputs are checked before the spec


@pytest.mark.parametrize("missing", ["--workflow-name", "--spec-file", "--handler"])
def test_missing_required_flag_exits_2(missing: str, src: Path, out: Path, capsys):
    args = args_for(src, out)
    index = args.index(missing)
    del args[index:index + 2]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert missing in capsys.readouterr().err
    assert os.listdir(out) == []


def test_pack_workflow_rejects_a_directory_as_spec(src: Path, out: Path):
    with pytest.raises(ArchiveError, match="spec file is not a regular file"):
        pack_workflow(workflow_name="w", spec_file=src, handler=src / "wf_handler.py", export_path=out)


def test_cli_as_a_subprocess(src: Path, out: Path, tmp_path: Path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "dagserve.archiver.workflow_cli", *args_for(src, out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert os.listdir(out) == ["my_wf.war"]
    assert "WAR-INF/MANIFEST.json" in war_contents(out / "my_wf.war")
