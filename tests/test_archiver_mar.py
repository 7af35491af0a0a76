"""Model archives: every format and flag of model-archiver, as torch-model-archiver 0.12.0."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import dagserve.archiver.pack
from dagserve.archiver import BUILTIN_HANDLERS, ArchiveError, pack_model, read_model_manifest
from dagserve.archiver.model_cli import main

REPO = Path(__file__).resolve().parents[1]
CREATED_ON = re.compile(r'"createdOn": "\d\d/\d\d/\d{4} \d\d:\d\d:\d\d"')

EXPECTED_MANIFEST = """{
  "createdOn": "<time>",
  "runtime": "python",
  "model": {
    "modelName": "my-model",
    "serializedFile": "weights.pt",
    "handler": "handler.py",
    "modelFile": "model.py",
    "modelVersion": "1.0",
    "requirementsFile": "requirements.txt",
    "configFile": "model-config.yaml"
  },
  "archiverVersion": "0.12.0"
}"""

# The files every full archive holds besides the manifest (extra/ contributes its contents).
EXPECTED_FILES = {
    "model.py": b"class Net: pass\n",
    "weights.pt": b"\x00weights\xff",
    "handler.py": b"def handle(data, ctx):\n    return data\n",
    "requirements.txt": b"numpy\n",
    "model-config.yaml": b"batchSize: 2\n",
    "index_to_name.json": b'{"0": "cat"}',
    ".env": b"dot-file kept\n",
    "vocab/words.txt": b"a\nb\n",
    "vocab/deeper/more.txt": b"c\n",
}


def normalized(manifest: str) -> str:
    """The manifest with its createdOn (checked for format) replaced by <time>."""
    assert len(CREATED_ON.findall(manifest)) == 1, manifest
    return CREATED_ON.sub('"createdOn": "<time>"', manifest)


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    """Model inputs, including files the archiver must skip."""
    root = tmp_path / "src"
    (root / "extra" / "vocab" / "deeper").mkdir(parents=True)
    (root / "extra" / ".git").mkdir()
    (root / "extra" / "__pycache__").mkdir()
    (root / "extra" / "vocab" / "__pycache__").mkdir()
    (root / "extra" / "vocab" / ".cache").mkdir()
    for name, data in {
        "model.py": EXPECTED_FILES["model.py"],
        "weights.pt": EXPECTED_FILES["weights.pt"],
        "handler.py": EXPECTED_FILES["handler.py"],
        "requirements.txt": EXPECTED_FILES["requirements.txt"],
        "model-config.yaml": EXPECTED_FILES["model-config.yaml"],
        "index_to_name.json": EXPECTED_FILES["index_to_name.json"],
        "extra/.env": EXPECTED_FILES[".env"],
        "extra/vocab/words.txt": EXPECTED_FILES["vocab/words.txt"],
        "extra/vocab/deeper/more.txt": EXPECTED_FILES["vocab/deeper/more.txt"],
        "extra/.git/HEAD": b"skipped",
        "extra/__pycache__/x.pyc": b"skipped",
        "extra/vocab/__pycache__/y.pyc": b"skipped",
        "extra/vocab/.cache/z": b"skipped",
    }.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def full_args(src: Path, out: Path, *more: str) -> list[str]:
    return [
        "--model-name", "my-model", "-v", "1.0",
        "--model-file", str(src / "model.py"),
        "--serialized-file", str(src / "weights.pt"),
        "--handler", str(src / "handler.py"),
        "--extra-files", f"{src / 'index_to_name.json'}, {src / 'extra'},",
        "-r", str(src / "requirements.txt"),
        "-c", str(src / "model-config.yaml"),
        "--export-path", str(out),
        *more,
    ]


def zip_contents(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---- formats ------------------------------------------------------------------------------


def test_default_format_is_deflated_zip_flat_with_manifest(src: Path, out: Path):
    assert main(full_args(src, out)) == 0
    assert sorted(os.listdir(out)) == ["my-model.mar"]
    contents = zip_contents(out / "my-model.mar")
    manifest = contents.pop("MAR-INF/MANIFEST.json").decode()
    assert normalized(manifest) == EXPECTED_MANIFEST
    assert contents == EXPECTED_FILES
    with zipfile.ZipFile(out / "my-model.mar") as zf:
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in zf.infolist())
        assert not any(info.is_dir() for info in zf.infolist())


def test_zip_store_format_is_stored(src: Path, out: Path):
    assert main(full_args(src, out, "--archive-format", "zip-store")) == 0
    with zipfile.ZipFile(out / "my-model.mar") as zf:
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}
        assert not any(info.is_dir() for info in zf.infolist())
    contents = zip_contents(out / "my-model.mar")
    assert normalized(contents.pop("MAR-INF/MANIFEST.json").decode()) == EXPECTED_MANIFEST
    assert contents == EXPECTED_FILES


def test_tgz_format_puts_everything_under_the_name(src: Path, out: Path):
    assert main(full_args(src, out, "--archive-format", "tgz")) == 0
    assert sorted(os.listdir(out)) == ["my-model.tar.gz"]
    archive = out / "my-model.tar.gz"
    assert archive.read_bytes()[:2] == b"\x1f\x8b"
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        assert all(m.isreg() for m in members)  # no directory entries
        contents = {m.name: tar.extractfile(m).read() for m in members}
    assert all(name.startswith("my-model/") for name in contents)
    manifest = contents.pop("my-model/MAR-INF/MANIFEST.json").decode()
    assert normalized(manifest) == EXPECTED_MANIFEST
    assert contents == {f"my-model/{k}": v for k, v in EXPECTED_FILES.items()}
    with gzip.open(archive) as gz:  # the gzip header names the archive, not a temp file
        gz.read(1)
    assert b"my-model.tar" in archive.read_bytes()[:64]


def test_no_archive_format_writes_a_directory(src: Path, out: Path):
    assert main(full_args(src, out, "--archive-format", "no-archive")) == 0
    assert sorted(os.listdir(out)) == ["my-model"]
    contents = tree(out / "my-model")
    assert normalized(contents.pop("MAR-INF/MANIFEST.json").decode()) == EXPECTED_MANIFEST
    assert contents == EXPECTED_FILES


def test_minimal_archive_has_only_handler_and_manifest(src: Path, out: Path):
    path = pack_model(model_name="m", version="0.1", handler=str(src / "handler.py"), export_path=out)
    assert path == out / "m.mar"
    contents = zip_contents(path)
    assert sorted(contents) == ["MAR-INF/MANIFEST.json", "handler.py"]
    assert normalized(contents["MAR-INF/MANIFEST.json"].decode()) == (
        '{\n  "createdOn": "<time>",\n  "runtime": "python",\n  "model": {\n'
        '    "modelName": "m",\n    "handler": "handler.py",\n    "modelVersion": "0.1"\n  },\n'
        '  "archiverVersion": "0.12.0"\n}'
    )


def test_runtime_flag(src: Path, out: Path):
    assert main(["--model-name", "m", "-v", "1", "--handler", "base_handler", "--runtime", "python3",
                 "--export-path", str(out)]) == 0
    manifest = zip_contents(out / "m.mar")["MAR-INF/MANIFEST.json"].decode()
    assert '"runtime": "python3"' in manifest


# ---- handlers and extra files ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_HANDLERS))
def test_builtin_handlers_are_not_copied(name: str, out: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{name}.py").write_text("# a local file with the built-in's name is ignored\n")
    path = pack_model(model_name="m", version="1", handler=name, export_path=out)
    contents = zip_contents(path)
    assert sorted(contents) == ["MAR-INF/MANIFEST.json"]
    assert read_model_manifest(_manifest_dict(contents)).handler == name


@pytest.mark.parametrize(
    ("argument", "manifest_value"),
    [
        ("lib/my_handler.py", "my_handler.py"),
        ("lib/my_handler.py:predict", "my_handler.py:predict"),
        ("lib/my_handler", "my_handler"),
        ("lib/my_handler:predict", "my_handler:predict"),
    ],
)
def test_handler_path_forms(argument: str, manifest_value: str, tmp_path: Path, out: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "my_handler.py").write_text("def predict(data, ctx): return data\n")
    path = pack_model(model_name="m", version="1", handler=argument, export_path=out)
    contents = zip_contents(path)
    assert sorted(contents) == ["MAR-INF/MANIFEST.json", "my_handler.py"]
    assert read_model_manifest(_manifest_dict(contents)).handler == manifest_value


def test_extra_files_as_a_list_and_later_files_win(src: Path, out: Path, tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "handler.py").write_text("# from extra files\n")
    (other / "vocab").mkdir()
    (other / "vocab" / "words.txt").write_text("replaced\n")
    path = pack_model(
        model_name="m", version="1", handler=str(src / "handler.py"), export_path=out,
        extra_files=[src / "extra", str(other)],
    )
    contents = zip_contents(path)
    assert contents["handler.py"] == b"# from extra files\n"  # extra files come after the handler
    assert contents["vocab/words.txt"] == b"replaced\n"
    assert contents["vocab/deeper/more.txt"] == EXPECTED_FILES["vocab/deeper/more.txt"]


def test_extra_files_follow_symlinks_and_skip_loops(src: Path, out: Path, tmp_path: Path):
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "big.bin").write_bytes(b"real content")
    extra = tmp_path / "extra2"
    extra.mkdir()
    (extra / "big.bin").symlink_to(linked / "big.bin")
    (extra / "data").symlink_to(linked, target_is_directory=True)
    (extra / "loop").symlink_to(extra, target_is_directory=True)
    path = pack_model(model_name="m", version="1", handler="base_handler", export_path=out, extra_files=str(extra))
    contents = zip_contents(path)
    assert contents["big.bin"] == b"real content"
    assert contents["data/big.bin"] == b"real content"
    assert not any(name.startswith("loop/") for name in contents)


def test_manifest_in_extra_files_is_replaced(src: Path, out: Path, tmp_path: Path):
    old = tmp_path / "old"
    (old / "MAR-INF").mkdir(parents=True)
    (old / "MAR-INF" / "MANIFEST.json").write_text('{"stale": true}')
    path = pack_model(model_name="m", version="7", handler="base_handler", export_path=out, extra_files=str(old))
    with zipfile.ZipFile(path) as zf:
        names = [info.filename for info in zf.infolist()]
    assert names.count("MAR-INF/MANIFEST.json") == 1
    assert read_model_manifest(_manifest_dict(zip_contents(path))).model_version == "7"


def _manifest_dict(contents: dict[str, bytes]) -> dict:
    import json

    return json.loads(contents["MAR-INF/MANIFEST.json"])


# ---- force and atomicity -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["default", "zip-store", "tgz", "no-archive"])
def test_existing_output_needs_force(fmt: str, src: Path, out: Path, capsys):
    assert main(full_args(src, out, "--archive-format", fmt)) == 0
    before = sorted(os.listdir(out))
    target = out / before[0]
    snapshot = tree(target) if target.is_dir() else target.read_bytes()
    capsys.readouterr()

    assert main(full_args(src, out, "--archive-format", fmt)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert sorted(os.listdir(out)) == before
    assert (tree(target) if target.is_dir() else target.read_bytes()) == snapshot

    assert main(full_args(src, out, "--archive-format", fmt, "-f")) == 0
    assert "WARNING - Overwrote" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before


def test_force_replaces_a_no_archive_directory_wholesale(src: Path, out: Path):
    stale = out / "m" / "stale.txt"
    stale.parent.mkdir()
    stale.write_text("old")
    pack_model(model_name="m", version="1", handler="base_handler", export_path=out,
               archive_format="no-archive", force=True)
    assert sorted(tree(out / "m")) == ["MAR-INF/MANIFEST.json"]
    assert sorted(os.listdir(out)) == ["m"]


def test_force_replaces_a_directory_in_the_way_of_an_archive(out: Path):
    (out / "m.mar").mkdir()
    path = pack_model(model_name="m", version="1", handler="base_handler", export_path=out, force=True)
    assert path.is_file() and zipfile.is_zipfile(path)
    assert sorted(os.listdir(out)) == ["m.mar"]


@pytest.mark.parametrize(
    ("fmt", "target"),
    [("default", "zipfile.ZipFile.write"), ("zip-store", "zipfile.ZipFile.write"),
     ("tgz", "tarfile.TarFile.addfile"), ("no-archive", "shutil.copy")],
)
def test_failure_while_writing_leaves_nothing(fmt: str, target: str, src: Path, out: Path, monkeypatch):
    module_name, _, attr = target.rpartition(".")
    owner = {"zipfile.ZipFile": zipfile.ZipFile, "tarfile.TarFile": tarfile.TarFile}.get(module_name)
    if owner is None:
        owner = dagserve.archiver.pack.shutil
    real = getattr(owner, attr)
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, flaky)
    with pytest.raises(ArchiveError, match="No space left on device"):
        pack_model(model_name="m", version="1", handler=str(src / "handler.py"), export_path=out,
                   extra_files=str(src / "extra"), archive_format=fmt)
    assert os.listdir(out) == []


def test_failure_with_force_keeps_the_old_archive(src: Path, out: Path, monkeypatch):
    pack_model(model_name="m", version="1", handler="base_handler", export_path=out)
    old = (out / "m.mar").read_bytes()

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(zipfile.ZipFile, "write", broken)
    with pytest.raises(ArchiveError):
        pack_model(model_name="m", version="2", handler=str(src / "handler.py"), export_path=out, force=True)
    assert os.listdir(out) == ["m.mar"]
    assert (out / "m.mar").read_bytes() == old


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["-lead", "_lead", ".lead", "has space", "slash/name", "uml\u00e4ut", "", "a\n"])
def test_invalid_model_names(name: str, out: Path):
    with pytest.raises(ArchiveError, match="invalid model name"):
        pack_model(model_name=name, version="1", handler="base_handler", export_path=out)
    assert os.listdir(out) == []


@pytest.mark.parametrize("name", ["a", "A9", "resnet-18", "my_model.v2", "0-._x"])
def test_valid_model_names(name: str, out: Path):
    assert pack_model(model_name=name, version="1", handler="base_handler", export_path=out).is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": ""}, "model version must not be empty"),
        ({"runtime": "lsp"}, "unsupported runtime 'lsp'"),
        ({"archive_format": "rar"}, "unknown archive format 'rar'"),
        ({"handler": "image_classifer"}, "neither a built-in handler"),
        ({"handler": "nowhere/h.py"}, "handler file not found: nowhere/h.py"),
        ({"handler": "h.py:not-a-name"}, "is not a function name"),
        ({"handler": ":handle"}, "no file before ':'"),
        ({"serialized_file": "missing.pt"}, "serialized file not found: missing.pt"),
        ({"model_file": "missing.py"}, "model file not found: missing.py"),
        ({"requirements_file": "missing.txt"}, "requirements file not found"),
        ({"config_file": "missing.yaml"}, "config file not found"),
        ({"extra_files": "a.json,missing.json"}, "extra file not found: missing.json"),
        ({"model_file": "."}, "model file is not a regular file"),
    ],
)
def test_bad_inputs(kwargs: dict, message: str, tmp_path: Path, out: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "h.py").write_text("")
    (tmp_path / "a.json").write_text("{}")
    args = {"model_name": "m", "version": "1", "handler": "base_handler", "export_path": out} | kwargs
    with pytest.raises(ArchiveError, match=re.escape(message)):
        pack_model(**args)
    assert os.listdir(out) == []


def test_broken_symlink_in_extra_dir(tmp_path: Path, out: Path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "dangling").symlink_to(tmp_path / "nothing")
    with pytest.raises(ArchiveError, match="broken symlink"):
        pack_model(model_name="m", version="1", handler="base_handler", export_path=out, extra_files=str(extra))
    assert os.listdir(out) == []


# ---- the CLI -------------------------------------------------------------------------------


def test_cli_defaults_to_the_current_directory(src: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--model-name", "here", "--version", "2.5", "--handler", str(src / "handler.py")]) == 0
    manifest = read_model_manifest(_manifest_dict(zip_contents(tmp_path / "here.mar")))
    assert (manifest.model_name, manifest.model_version, manifest.runtime) == ("here", "2.5", "python")


def test_cli_long_flags(src: Path, out: Path):
    args = [
        "--model-name", "long", "--version", "3",
        "--model-file", str(src / "model.py"), "--serialized-file", str(src / "weights.pt"),
        "--handler", f"{src / 'handler.py'}:handle", "--extra-files", str(src / "index_to_name.json"),
        "--runtime", "python", "--export-path", str(out), "--archive-format", "zip-store",
        "--requirements-file", str(src / "requirements.txt"), "--config-file", str(src / "model-config.yaml"),
        "--force",
    ]
    assert main(args) == 0
    contents = zip_contents(out / "long.mar")
    assert sorted(contents) == sorted(
        ["MAR-INF/MANIFEST.json", "model.py", "weights.pt", "handler.py", "index_to_name.json",
         "requirements.txt", "model-config.yaml"]
    )
    manifest = read_model_manifest(_manifest_dict(contents))
    assert manifest.handler == "handler.py:handle"
    assert manifest.requirements_file == "requirements.txt"
    assert manifest.config_file == "model-config.yaml"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--model-name", "bad name"], "invalid model name 'bad name'"),
        (["--serialized-file", "/no/such/file.pt"], "serialized file not found: /no/such/file.pt"),
        (["--handler", "/no/such/handler.py"], "handler file not found"),
        (["--extra-files", "/no/such/dir"], "extra file not found: /no/such/dir"),
        (["--export-path", "/no/such/export"], "export path is not a directory: /no/such/export"),
    ],
)
def test_cli_bad_input_exits_1_with_one_line(change: list[str], message: str, src: Path, out: Path, capsys):
    args = full_args(src, out)
    flag = change[0]
    if flag in args:
        index = args.index(flag)
        args[index + 1] = change[1]
    else:
        args += change
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("model-archiver: error: ")
    assert message in lines[0]
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    "args",
    [
        ["-v", "1", "--handler", "base_handler"],  # no --model-name
        ["--model-name", "m", "--handler", "base_handler"],  # no version
        ["--model-name", "m", "-v", "1"],  # no handler
        ["--model-name", "m", "-v", "1", "--handler", "base_handler", "--archive-format", "zip"],
        ["--model-name", "m", "-v", "1", "--handler", "base_handler", "--runtime", "java"],
    ],
)
def test_cli_usage_errors_exit_2(args: list[str], tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "usage: model-archiver" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def test_cli_as_a_subprocess(src: Path, out: Path, tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "dagserve.archiver.model_cli", *full_args(src, out, "--archive-format", "tgz")],
        cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    assert sorted(os.listdir(out)) == ["my-model.tar.gz"]

    again = subprocess.run(
        [sys.executable, "-m", "dagserve.archiver.model_cli", *full_args(src, out, "--archive-format", "tgz")],
        cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr


def test_cli_force_with_bad_input_prints_only_the_error(src: Path, out: Path, capsys):
    assert main(full_args(src, out)) == 0
    capsys.readouterr()
    args = full_args(src, out, "-f")
    args[args.index("--serialized-file") + 1] = "/no/such.pt"
    assert main(args) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "serialized file not found" in lines[0]


def test_manifest_bytes_with_a_fixed_time(src: Path, out: Path):
    from datetime import datetime

    path = pack_model(
        model_name="my-model", version="1.0", handler=str(src / "handler.py"),
        model_file=src / "model.py", serialized_file=src / "weights.pt",
        requirements_file=src / "requirements.txt", config_file=src / "model-config.yaml",
        export_path=out, now=datetime(2024, 5, 6, 7, 8, 10),  # zip times have 2 s resolution
    )
    manifest = zip_contents(path)["MAR-INF/MANIFEST.json"].decode()
    assert manifest == EXPECTED_MANIFEST.replace("<time>", "06/05/2024 07:08:10")
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("MAR-INF/MANIFEST.json").date_time == (2024, 5, 6, 7, 8, 10)
