"""The safe unpacker: round trips of every format, and each refusal leaving nothing behind."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

import dagserve.archiver
from dagserve.archiver import ArchiveError, pack_model, pack_workflow, read_model_manifest, read_workflow_manifest, unpack
from dagserve.archiver.unpack import _Budget

FILES = {
    "model.py": b"class Net: pass\n",
    "weights.pt": b"\x00\x01weights" * 100,
    "handler.py": b"def handle(data, ctx):\n    return data\n",
    ".env": b"dot-file\n",
    "vocab/words.txt": b"a\nb\n",
    "vocab/deeper/more.txt": b"c\n",
}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    root = tmp_path / "inputs"
    (root / "extra" / "vocab" / "deeper").mkdir(parents=True)
    (root / "model.py").write_bytes(FILES["model.py"])
    (root / "weights.pt").write_bytes(FILES["weights.pt"])
    (root / "handler.py").write_bytes(FILES["handler.py"])
    (root / "extra" / ".env").write_bytes(FILES[".env"])
    (root / "extra" / "vocab" / "words.txt").write_bytes(FILES["vocab/words.txt"])
    (root / "extra" / "vocab" / "deeper" / "more.txt").write_bytes(FILES["vocab/deeper/more.txt"])
    return root


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """An empty directory to unpack into; tests check it stays empty after a refusal."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def make_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def zinfo(name: str, mode: int | None = None) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.create_system = 3
        info.external_attr = mode << 16
    return info


def make_tgz(path: Path, entries: list[tuple[str, str, object]]) -> Path:
    """``entries``: (kind, name, payload) with kind file/dir/symlink/hardlink/chr/fifo."""
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "file":
                data = payload if isinstance(payload, bytes) else b""
                info.size = len(data)
                info.mode = 0o644
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = payload
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def refused(src: Path, work: Path, match: str, **limits) -> None:
    """Unpacking ``src`` raises ArchiveError matching ``match`` and leaves ``work`` empty."""
    with pytest.raises(ArchiveError, match=match):
        unpack(src, work / "dest", **limits)
    assert os.listdir(work) == []


# ---- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "name"), [("default", "m.mar"), ("zip-store", "m.mar"), ("tgz", "m.tar.gz"),
                                            ("no-archive", "m")])
def test_model_round_trip(fmt: str, name: str, inputs: Path, tmp_path: Path, work: Path):
    store = tmp_path / "store"
    store.mkdir()
    path = pack_model(
        model_name="m", version="2.0", model_file=inputs / "model.py", serialized_file=inputs / "weights.pt",
        handler=str(inputs / "handler.py"), extra_files=str(inputs / "extra"), export_path=store,
        archive_format=fmt,
    )
    assert path == store / name
    dest = unpack(path, work / "m-unpacked")
    assert dest == work / "m-unpacked"
    contents = tree(dest)
    assert contents.pop("MAR-INF/MANIFEST.json")
    assert contents == FILES
    manifest = read_model_manifest(dest)
    assert (manifest.model_name, manifest.model_version, manifest.handler) == ("m", "2.0", "handler.py")
    assert sorted(os.listdir(work)) == ["m-unpacked"]  # no temporary directory left


def test_workflow_round_trip(inputs: Path, tmp_path: Path, work: Path):
    spec = inputs / "wf.yaml"
    spec.write_text("models: {}\ndag: {}\n")
    war = pack_workflow(workflow_name="wf", spec_file=spec, handler=inputs / "handler.py",
                        extra_files=str(inputs / "extra"), export_path=tmp_path)
    dest = unpack(war, work / "wf")
    manifest = read_workflow_manifest(dest)
    assert (manifest.workflow_name, manifest.spec_file, manifest.handler) == ("wf", "wf.yaml", "handler.py")
    contents = tree(dest)
    assert contents["wf.yaml"] == b"models: {}\ndag: {}\n"
    assert contents["vocab/deeper/more.txt"] == b"c\n"


def test_archive_type_is_recognised_by_content(inputs: Path, tmp_path: Path, work: Path):
    path = pack_model(model_name="m", version="1", handler="base_handler", export_path=tmp_path, archive_format="tgz")
    renamed = path.rename(tmp_path / "model-without-extension")
    assert read_model_manifest(unpack(renamed, work / "d")).model_name == "m"


def test_executable_bits_are_kept(tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "x.mar", [(zinfo("run.sh", stat.S_IFREG | 0o755), b"#!/bin/sh\n"),
                                        (zinfo("data.txt", stat.S_IFREG | 0o4644), b"x")])
    dest = unpack(src, work / "d")
    assert os.stat(dest / "run.sh").st_mode & 0o100
    assert not os.stat(dest / "data.txt").st_mode & (0o111 | stat.S_ISUID)


def test_zip_directory_entries_are_created(tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "x.mar", [("empty/", b""), ("sub/a.txt", b"a")])
    dest = unpack(src, work / "d")
    assert (dest / "empty").is_dir() and (dest / "sub" / "a.txt").read_bytes() == b"a"


def test_tgz_first_component_is_stripped_like_torchserve(tmp_path: Path, work: Path):
    src = make_tgz(tmp_path / "m.tar.gz", [
        ("dir", "m", None), ("file", "m/a.py", b"a"), ("dir", "m/sub", None), ("file", "m/sub/b", b"b"),
        ("file", "top.txt", b"top"),  # a file with no folder stays at the top
    ])
    assert tree(unpack(src, work / "d")) == {"a.py": b"a", "sub/b": b"b", "top.txt": b"top"}


def test_tgz_made_with_dot_prefix(tmp_path: Path, work: Path):
    src = make_tgz(tmp_path / "m.tgz", [("dir", ".", None), ("file", "./a.py", b"a"), ("file", "./sub/b", b"b")])
    assert tree(unpack(src, work / "d")) == {"a.py": b"a", "sub/b": b"b"}


def test_tgz_symlink_and_hardlink_inside_are_allowed(tmp_path: Path, work: Path):
    src = make_tgz(tmp_path / "m.tar.gz", [
        ("file", "m/real.txt", b"content"),
        ("symlink", "m/alias.txt", "real.txt"),
        ("symlink", "m/sub/up.txt", "../real.txt"),
        ("hardlink", "m/copy.txt", "m/real.txt"),
    ])
    dest = unpack(src, work / "d")
    assert os.readlink(dest / "alias.txt") == "real.txt"
    assert (dest / "alias.txt").read_bytes() == b"content"
    assert (dest / "sub" / "up.txt").read_bytes() == b"content"
    assert (dest / "copy.txt").read_bytes() == b"content" and not (dest / "copy.txt").is_symlink()


def test_directory_is_copied_not_used_in_place(inputs: Path, work: Path):
    dest = unpack(inputs, work / "d")
    assert tree(dest) == tree(inputs)
    (inputs / "model.py").write_text("changed")
    assert (dest / "model.py").read_bytes() == FILES["model.py"]


def test_directory_with_a_single_subdirectory_is_unwrapped(tmp_path: Path, work: Path):
    outer = tmp_path / "outer"
    (outer / "inner" / "MAR-INF").mkdir(parents=True)
    (outer / "inner" / "MAR-INF" / "MANIFEST.json").write_text('{"model": {"modelName": "x"}}')
    dest = unpack(outer, work / "d")
    assert read_model_manifest(dest).model_name == "x"

    only_manifest = tmp_path / "only"
    (only_manifest / "MAR-INF").mkdir(parents=True)
    (only_manifest / "MAR-INF" / "MANIFEST.json").write_text('{"model": {"modelName": "y"}}')
    assert read_model_manifest(unpack(only_manifest, work / "e")).model_name == "y"


def test_directory_symlinks_are_followed_and_loops_skipped(tmp_path: Path, work: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "weights.bin").write_bytes(b"w")
    model = tmp_path / "model"
    model.mkdir()
    (model / "handler.py").write_text("")
    (model / "weights.bin").symlink_to(elsewhere / "weights.bin")
    (model / "loop").symlink_to(model, target_is_directory=True)
    dest = unpack(model, work / "d")
    assert tree(dest) == {"handler.py": b"", "weights.bin": b"w"}
    assert not (dest / "weights.bin").is_symlink()


# ---- refusals: zip ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("/etc/evil", "absolute path"),
        ("C:/evil", "absolute path"),
        ("../evil", r"'\.\.' component"),
        ("ok/../../evil", r"'\.\.' component"),
        ("..\\evil", r"'\.\.' component"),
    ],
)
def test_zip_unsafe_names(name: str, match: str, tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "bad.mar", [("fine.txt", b"x"), (zinfo(name), b"evil")])
    refused(src, work, match)
    assert not (tmp_path / "evil").exists()


def test_zip_symlink_entry(tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "bad.mar", [(zinfo("link", stat.S_IFLNK | 0o777), b"/etc/passwd")])
    refused(src, work, "symlink entry 'link'")


def test_zip_device_entry(tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "bad.mar", [(zinfo("dev", stat.S_IFCHR | 0o644), b"")])
    refused(src, work, "special file")


def test_zip_too_many_files(tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "many.mar", [(f"f{i}", b"") for i in range(6)])
    refused(src, work, "too many files", max_files=5)
    assert unpack(src, work / "ok", max_files=6).is_dir()


def test_zip_too_large_by_declared_size(tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "big.mar", [("a", b"\0" * 600), ("b", b"\0" * 600)])
    refused(src, work, "too large: declares 1200 bytes", max_total_bytes=1000)
    assert unpack(src, work / "ok", max_total_bytes=1200).is_dir()


def test_zip_entry_whose_declared_size_lies(tmp_path: Path, work: Path):
    """A bomb that declares 10 bytes but inflates to 100 kB is refused, whatever tells first."""
    src = make_zip(tmp_path / "liar.mar", [("bomb", b"\0" * 100_000)])
    data = bytearray(src.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    data[local + 22:local + 26] = (10).to_bytes(4, "little")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    src.write_bytes(bytes(data))
    with zipfile.ZipFile(src) as zf:
        assert zf.infolist()[0].file_size == 10  # the lie passes the declared-size check
    refused(src, work, "bomb", max_total_bytes=1000)


def test_bytes_are_counted_even_when_declared_sizes_pass(tmp_path: Path, work: Path, monkeypatch):
    src = make_zip(tmp_path / "x.mar", [("a", b"\0" * 5000)])
    monkeypatch.setattr(_Budget, "declare", lambda self, size: None)
    refused(src, work, "expands to more than the limit of 1000 bytes", max_total_bytes=1000)


def test_zip_encrypted_entry(tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "enc.mar", [("secret.txt", b"x")])
    data = bytearray(src.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # general purpose flags
        at = data.index(signature) + offset
        data[at] |= 0x1
    src.write_bytes(bytes(data))
    refused(src, work, "encrypted entry")


def test_zip_conflicting_entries(tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "c.mar", [("a", b"file"), ("a/b", b"under a file")])
    refused(src, work, "cannot unpack")


def test_truncated_zip(tmp_path: Path, work: Path):
    good = make_zip(tmp_path / "g.mar", [("a", b"compressible " * 1000)])
    data = bytearray(good.read_bytes())
    start = data.index(b"PK\x03\x04") + 30 + 1  # just past the local header and name "a"
    data[start + 10:start + 40] = bytes(30)  # the directory is intact, the deflated data is not
    bad = tmp_path / "t.mar"
    bad.write_bytes(bytes(data))
    refused(bad, work, "corrupt")


# ---- refusals: tar.gz -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([("file", "/etc/evil", b"x")], "absolute path"),
        ([("file", "m/../../evil", b"x")], r"'\.\.' component"),
        ([("file", "../evil", b"x")], r"'\.\.' component"),
        ([("symlink", "m/passwd", "/etc/passwd")], "absolute or empty target"),
        ([("symlink", "m/up", "../../..")], "points outside the archive"),
        ([("symlink", "m/sub/up", "../../x")], "points outside the archive"),
        # each link looks inside on its own; together t resolves to the parent of the target
        ([("symlink", "m/s", "."), ("symlink", "m/t", "s/..")], "resolves outside the archive"),
        ([("symlink", "m/s", "sub"), ("file", "m/s/x", b"x"), ("file", "m/sub/y", b"y")],
         "already used by another entry"),
        ([("hardlink", "m/h", "/etc/passwd")], "absolute path"),
        ([("hardlink", "m/h", "m/not-there")], "not a file extracted from this archive"),
        ([("hardlink", "m/h", "m/../../etc/passwd")], r"'\.\.' component"),
        ([("chr", "m/null", None)], "device file"),
        ([("fifo", "m/pipe", None)], "special entry"),
    ],
)
def test_tgz_refusals(entries, match, tmp_path: Path, work: Path):
    src = make_tgz(tmp_path / "bad.tar.gz", [("file", "m/ok.txt", b"ok"), *entries])
    refused(src, work, match)
    assert not (tmp_path / "evil").exists()


def test_tgz_too_many_files(tmp_path: Path, work: Path):
    src = make_tgz(tmp_path / "many.tgz", [("file", f"m/f{i}", b"") for i in range(11)])
    refused(src, work, "too many files", max_files=10)


def test_tgz_too_large(tmp_path: Path, work: Path):
    src = make_tgz(tmp_path / "big.tgz", [("file", "m/a", b"\0" * 700), ("file", "m/b", b"\0" * 700)])
    refused(src, work, "too large", max_total_bytes=1000)


def test_hardlink_copies_count_against_the_limit(tmp_path: Path, work: Path):
    src = make_tgz(tmp_path / "h.tgz", [("file", "m/a", b"\0" * 600), ("hardlink", "m/b", "m/a")])
    refused(src, work, "too large", max_total_bytes=1000)


def test_corrupt_gzip(tmp_path: Path, work: Path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + os.urandom(200))
    refused(bad, work, "bad.tar.gz")


# ---- refusals: directories and arguments ---------------------------------------------------------


def test_directory_too_many_files(inputs: Path, work: Path):
    refused(inputs, work, "too many files", max_files=3)


def test_directory_too_large(inputs: Path, work: Path):
    refused(inputs, work, "too large", max_total_bytes=100)


def test_directory_with_a_fifo(tmp_path: Path, work: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.txt").write_text("a")
    os.mkfifo(model / "pipe")
    refused(model, work, "special file")


def test_directory_with_a_broken_symlink(tmp_path: Path, work: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.txt").write_text("a")
    (model / "gone").symlink_to(tmp_path / "nothing")
    refused(model, work, "broken symlink")


def test_not_an_archive(tmp_path: Path, work: Path):
    src = tmp_path / "x.mar"
    src.write_bytes(b"this is not a zip file at all")
    refused(src, work, "not a zip")


def test_missing_source(tmp_path: Path, work: Path):
    refused(tmp_path / "nope.mar", work, "archive not found")


def test_destination_must_not_exist(tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "x.mar", [("a", b"a")])
    (work / "dest").mkdir()
    with pytest.raises(ArchiveError, match="destination already exists"):
        unpack(src, work / "dest")
    assert os.listdir(work) == ["dest"] and os.listdir(work / "dest") == []


def test_destination_parent_must_exist(tmp_path: Path):
    src = make_zip(tmp_path / "x.mar", [("a", b"a")])
    with pytest.raises(ArchiveError, match="parent directory does not exist"):
        unpack(src, tmp_path / "no" / "dest")
    assert not (tmp_path / "no").exists()


def test_default_limits_are_finite():
    assert 0 < dagserve.archiver.DEFAULT_MAX_TOTAL_BYTES < 2**40
    assert 0 < dagserve.archiver.DEFAULT_MAX_FILES < 10**7


def test_destination_inside_the_copied_directory(inputs: Path):
    with pytest.raises(ArchiveError, match="inside the directory being copied"):
        unpack(inputs, inputs / "extra" / "copy")
    assert not (inputs / "extra" / "copy").exists()
    assert sorted(os.listdir(inputs / "extra")) == [".env", "vocab"]


def test_default_limits_are_safe():
    """Issue 17: 1 GiB and 10,000 entries by default (were 4 GiB and 100,000)."""
    from dagserve.archiver.unpack import DEFAULT_MAX_RATIO

    assert dagserve.archiver.DEFAULT_MAX_TOTAL_BYTES == 1024**3
    assert dagserve.archiver.DEFAULT_MAX_FILES == 10_000
    assert DEFAULT_MAX_RATIO == 100


def test_zip_entry_over_the_compression_ratio_is_refused_before_writing(tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "bomb.mar", [("zeros", b"\0" * (4 << 20))])  # ~1000:1
    refused(src, work, "over the compression ratio limit of 100")
    assert unpack(src, work / "ok", max_ratio=2000).is_dir()


def test_small_compressible_files_pass_the_ratio_limit(tmp_path: Path, work: Path):
    src = make_zip(tmp_path / "ok.mar", [(f"z{i}", b"\0" * 100_000) for i in range(5)])
    assert unpack(src, work / "ok").is_dir()


def test_tgz_expanding_past_the_ratio_is_refused(tmp_path: Path, work: Path):
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("m/zeros")
        info.size = 4 << 20
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    refused(path, work, "compression ratio limit")
