"""Hostile archives registered through the real management API: zip-slip, absolute paths,
symlinks, bombs (by ratio and by size), too many files, unsafe YAML in a workflow spec,
garbage. Each is a 400 with a JSON body that names no server path; nothing is written
outside the server's directories, no model is left half-registered, no process is left."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import pytest
import requests

from conftest import REQUEST_TIMEOUT, assert_no_processes_left, files_under
from server_utils import ECHO_HANDLER, build_mar, build_war, start_server

MAX_ARCHIVE_SIZE = 8 << 20  # this server's max_archive_size


def write_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]],
              compression: int = zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for info, data in entries:
            zf.writestr(info, data)


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (0o120777 << 16)
    return info


def hostile_archives(store: Path, outside: Path) -> dict[str, str]:
    """Writes the archives; returns name -> what the refusal must say."""
    write_zip(store / "slip.mar", [("MAR-INF/MANIFEST.json", b"{}"),
                                   (f"../../{outside.name}/pwned.txt", b"escaped")])
    write_zip(store / "absolute.mar", [(str(outside / "pwned.txt"), b"escaped")])
    write_zip(store / "symlink.mar", [(symlink_info("link"), str(outside).encode())])
    with tarfile.open(store / "tarlink.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("m/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../../../../../etc/passwd"
        tar.addfile(info)
    write_zip(store / "ratio.mar", [("zeros.bin", b"\0" * (6 << 20))])
    write_zip(store / "large.mar", [("big.bin", b"\1" * (MAX_ARCHIVE_SIZE + 1))],
              zipfile.ZIP_STORED)
    write_zip(store / "many.mar", [(f"f/{i}", b"") for i in range(10_001)], zipfile.ZIP_STORED)
    (store / "garbage.mar").write_bytes(b"this is not an archive" * 10)
    return {"slip.mar": "'..' component", "absolute.mar": "absolute path",
            "symlink.mar": "symlink", "tarlink.tar.gz": "points outside the archive",
            "ratio.mar": "compression ratio limit", "large.mar": "too large",
            "many.mar": "too many files", "garbage.mar": "not a zip"}


UNSAFE_SPEC = """
models:
  min-workers: 1
  evil: !!python/object/apply:os.system ["touch {marker}"]
dag:
  pre: []
"""


def make_unsafe_war(wars: Path, spec: str) -> None:
    """A real .war whose spec is then swapped for one with a Python YAML tag (the archiver
    itself refuses to pack it)."""
    safe = build_war(wars, "unsafe", "models:\n  min-workers: 1\ndag:\n  pre: []\n",
                     "def pre(data, context):\n    return data\n")
    with zipfile.ZipFile(safe) as zf:
        entries = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(safe, "w") as zf:
        for info, data in entries:
            zf.writestr(info, spec.encode() if info.filename.endswith(".yaml") else data)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("archive-faults")
    store, wars, outside = work / "store", work / "wars", work / "outside"
    outside.mkdir()
    build_mar(store, "echo", ECHO_HANDLER)
    expected = hostile_archives(store, outside)
    marker = work / "yaml-ran"
    make_unsafe_war(wars, UNSAFE_SPEC.format(marker=marker))
    srv = start_server(work, model_store=store, config={"max_archive_size": MAX_ARCHIVE_SIZE},
                       args=["--workflow-store", str(wars), "--disable-token-auth",
                             "--enable-model-api", "--ncs"])
    store_files = files_under(store)
    try:
        yield srv, work, store, outside, expected, marker
    finally:
        known = srv.worker_pids()
        srv.stop()
        assert_no_processes_left(srv.pid, known)
        assert files_under(store) == store_files
        assert list(outside.iterdir()) == []
        assert not list((work / "tmp").glob("dagserve-*"))


def no_server_path(message: str, *roots: Path) -> None:
    for root in roots:
        assert str(root) not in message, message
    assert "/tmp/" not in message, message


@pytest.mark.parametrize("name", ["slip.mar", "absolute.mar", "symlink.mar", "tarlink.tar.gz",
                                  "ratio.mar", "large.mar", "many.mar", "garbage.mar"])
def test_a_hostile_archive_is_refused_and_leaves_nothing(setup, name, figures):
    srv, work, store, outside, expected, _ = setup
    models_before = srv.unpacked_models()
    resp = requests.post(srv.management_url + "/models", timeout=120,
                         params={"url": name, "initial_workers": 1, "synchronous": "true"})
    figures.requests += 1
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["code"] == 400 and expected[name] in body["message"]
    no_server_path(body["message"], store, work)
    assert list(outside.iterdir()) == []
    assert srv.unpacked_models() == models_before
    models = requests.get(srv.management_url + "/models", timeout=REQUEST_TIMEOUT).json()
    assert [m["modelName"] for m in models["models"]] == []


def test_unsafe_yaml_in_a_workflow_spec_is_refused_and_never_run(setup, figures):
    srv, work, store, _, _, marker = setup
    resp = requests.post(srv.management_url + "/workflows", timeout=120,
                         params={"url": "unsafe.war"})
    figures.requests += 1
    assert resp.status_code == 400, resp.text
    no_server_path(resp.json()["message"], store, work)
    assert not marker.exists()


def test_the_server_still_registers_and_serves_a_good_archive(setup):
    srv = setup[0]
    resp = requests.post(srv.management_url + "/models", timeout=120,
                         params={"url": "echo.mar", "initial_workers": 1, "synchronous": "true"})
    assert resp.status_code == 200, resp.text
    resp = requests.post(srv.inference_url + "/predictions/echo", data=b"ok",
                         timeout=REQUEST_TIMEOUT)
    assert resp.content == b"ok"
    requests.delete(srv.management_url + "/models/echo", timeout=REQUEST_TIMEOUT)
