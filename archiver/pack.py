"""Write model (.mar) and workflow (.war) archives.

Formats (torch-model-archiver ``--archive-format``):

- ``default``: ``<name>.mar``, a deflated zip
- ``zip-store``: ``<name>.mar``, a stored (uncompressed) zip
- ``tgz``: ``<name>.tar.gz``, every entry under ``<name>/``
- ``no-archive``: a directory ``<name>/``

Files sit flat at the root (an extra-files directory keeps its sub-directories), the
manifest is ``MAR-INF/MANIFEST.json`` (``WAR-INF`` for workflows), and archives hold no
directory entries.  Output is built under a temporary name in the export directory and
renamed at the end, so a failure leaves nothing behind and an existing archive is only
replaced (with ``force``) by a complete one.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from dagserve.archiver.errors import ArchiveError
from dagserve.archiver.manifest import (
    MODEL_MANIFEST_PATH,
    WORKFLOW_MANIFEST_PATH,
    ModelManifest,
    WorkflowManifest,
    format_created_on,
)
from dagserve.archiver.sources import (
    ExtraFiles,
    FileSet,
    require_file,
    resolve_model_handler,
    split_extra_files,
)

ARCHIVE_FORMATS = ("default", "zip-store", "tgz", "no-archive")
_SUFFIXES = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}
PACK_RUNTIMES = ("python", "python3")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")

PathArg = str | os.PathLike[str]


def archive_path(export_path: PathArg, name: str, archive_format: str = "default") -> Path:
    """Where an archive named ``name`` in ``archive_format`` is written."""
    if archive_format not in _SUFFIXES:
        raise ArchiveError(
            f"unknown archive format {archive_format!r} (expected one of {', '.join(ARCHIVE_FORMATS)})"
        )
    return Path(export_path) / f"{name}{_SUFFIXES[archive_format]}"


def check_name(name: str, kind: str = "model") -> None:
    """Names must match ``^[A-Za-z0-9][A-Za-z0-9_\\-.]*$`` (TorchServe's rule)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ArchiveError(
            f"invalid {kind} name {name!r}: it must match ^[A-Za-z0-9][A-Za-z0-9_\\-.]*$"
        )


def pack_model(
    *,
    model_name: str,
    version: str,
    handler: str,
    serialized_file: PathArg | None = None,
    model_file: PathArg | None = None,
    extra_files: ExtraFiles = None,
    runtime: str = "python",
    export_path: PathArg = ".",
    archive_format: str = "default",
    force: bool = False,
    requirements_file: PathArg | None = None,
    config_file: PathArg | None = None,
    now: datetime | None = None,
) -> Path:
    """Build a model archive the way ``torch-model-archiver`` 0.12.0 does; return its path.

    ``handler`` is a built-in handler name (not copied) or ``path/file[.py][:function]``
    (the file is copied; the manifest says ``file[.py][:function]``).  ``extra_files`` is
    a comma-separated string or a list of paths.  ``now`` (default: the current time)
    is the manifest's ``createdOn``.
    """
    check_name(model_name, "model")
    if not version or not version.strip():
        raise ArchiveError("model version must not be empty")
    if runtime not in PACK_RUNTIMES:
        raise ArchiveError(f"unsupported runtime {runtime!r} (expected one of {', '.join(PACK_RUNTIMES)})")
    out = archive_path(_export_dir(export_path), model_name, archive_format)
    _check_free(out, force)

    # Same order as TorchServe copies them: a later file with the same name wins.
    files = FileSet()
    if model_file is not None:
        files.add_file(require_file(model_file, "model file"))
    if serialized_file is not None:
        files.add_file(require_file(serialized_file, "serialized file"))
    handler_ref = resolve_model_handler(handler)
    if handler_ref.source is not None:
        files.add_file(handler_ref.source)
    for extra in split_extra_files(extra_files):
        files.add_extra(extra)
    if requirements_file is not None:
        files.add_file(require_file(requirements_file, "requirements file"))
    if config_file is not None:
        files.add_file(require_file(config_file, "config file"))
    files.discard(MODEL_MANIFEST_PATH)  # ours replaces any copied along

    manifest = ModelManifest(
        model_name=model_name,
        model_version=version,
        handler=handler_ref.manifest_value,
        runtime=runtime,
        serialized_file=_base(serialized_file),
        model_file=_base(model_file),
        requirements_file=_base(requirements_file),
        config_file=_base(config_file),
        created_on=format_created_on(now),
    )
    when = now or datetime.now()
    manifest_bytes = manifest.to_json().encode("utf-8")
    if archive_format == "no-archive":
        _publish_dir(out, force, lambda tmp: _write_dir(tmp, files, MODEL_MANIFEST_PATH, manifest_bytes))
    elif archive_format == "tgz":
        _publish_file(
            out, force, lambda f: _write_tgz(f, model_name, files, MODEL_MANIFEST_PATH, manifest_bytes, when)
        )
    else:
        method = zipfile.ZIP_STORED if archive_format == "zip-store" else zipfile.ZIP_DEFLATED
        _publish_file(out, force, lambda f: _write_zip(f, files, MODEL_MANIFEST_PATH, manifest_bytes, when, method))
    return out


def pack_workflow(
    *,
    workflow_name: str,
    spec_file: PathArg,
    handler: PathArg,
    extra_files: ExtraFiles = None,
    export_path: PathArg = ".",
    force: bool = False,
    now: datetime | None = None,
    validate_spec: Callable[[Path], None] | None = None,
) -> Path:
    """Build ``<workflow_name>.war`` the way ``torch-workflow-archiver`` does; return its path.

    ``validate_spec``, when given, is called with the spec file after the inputs are
    checked and before anything is written; whatever it raises propagates.
    """
    check_name(workflow_name, "workflow")
    out = _export_dir(export_path) / f"{workflow_name}.war"
    _check_free(out, force)
    spec = require_file(spec_file, "spec file")
    handler_path = require_file(handler, "workflow handler file")
    files = FileSet()
    files.add_file(spec)
    files.add_file(handler_path)
    for extra in split_extra_files(extra_files):
        files.add_extra(extra)
    files.discard(WORKFLOW_MANIFEST_PATH)
    if validate_spec is not None:
        validate_spec(spec)

    manifest = WorkflowManifest(
        workflow_name=workflow_name,
        spec_file=spec.name,
        handler=handler_path.name,
        created_on=format_created_on(now),
    )
    when = now or datetime.now()
    data = manifest.to_json().encode("utf-8")
    _publish_file(out, force, lambda f: _write_zip(f, files, WORKFLOW_MANIFEST_PATH, data, when, zipfile.ZIP_DEFLATED))
    return out


def _base(path: PathArg | None) -> str | None:
    return None if path is None else os.path.basename(os.fspath(path))


def _export_dir(export_path: PathArg) -> Path:
    export = Path(export_path)
    if not export.is_dir():
        raise ArchiveError(f"export path is not a directory: {export}")
    return export


def _check_free(out: Path, force: bool) -> None:
    if (out.exists() or out.is_symlink()) and not force:
        raise _exists_error(out)


def _exists_error(out: Path) -> ArchiveError:
    return ArchiveError(f"{out} already exists; use -f/--force to overwrite it")


# ---- writers: each fills a temporary file or directory ---------------------------------


def _write_zip(
    fileobj: io.BufferedWriter,
    files: FileSet,
    manifest_name: str,
    manifest: bytes,
    when: datetime,
    method: int,
) -> None:
    with zipfile.ZipFile(fileobj, "w", compression=method, allowZip64=True, strict_timestamps=False) as zf:
        for arcname, source in files.items():
            zf.write(source, arcname)
        info = zipfile.ZipInfo(manifest_name, date_time=when.timetuple()[:6])
        info.compress_type = method
        info.external_attr = 0o644 << 16
        zf.writestr(info, manifest)


def _write_tgz(
    fileobj: io.BufferedWriter,
    root: str,
    files: FileSet,
    manifest_name: str,
    manifest: bytes,
    when: datetime,
) -> None:
    # gzip is opened here so its header names the archive, not the temporary file.
    mtime = int(when.timestamp())
    with (
        gzip.GzipFile(filename=f"{root}.tar", mode="wb", fileobj=fileobj, mtime=mtime) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for arcname, source in files.items():
            with source.open("rb") as f:
                info = tar.gettarinfo(arcname=f"{root}/{arcname}", fileobj=f)
                tar.addfile(info, f)
        info = tarfile.TarInfo(f"{root}/{manifest_name}")
        info.size = len(manifest)
        info.mode = 0o644
        info.mtime = mtime
        tar.addfile(info, io.BytesIO(manifest))


def _write_dir(tmp: Path, files: FileSet, manifest_name: str, manifest: bytes) -> None:
    for arcname, source in files.items():
        target = tmp / arcname
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    target = tmp / manifest_name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(manifest)


# ---- atomic publication -----------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_file(out: Path, force: bool, write: Callable[[io.BufferedWriter], None]) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        _install(tmp, out, force)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _reraise(exc, out)


def _publish_dir(out: Path, force: bool, write: Callable[[Path], None]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        _install(tmp, out, force)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _reraise(exc, out)


def _install(tmp: Path, out: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out``, replacing what is there only when ``force``."""
    if not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
        return
    if not force:
        raise _exists_error(out)
    if out.is_dir() and not out.is_symlink():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex}")
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    elif tmp.is_dir():
        out.unlink()
        os.rename(tmp, out)
    else:
        os.replace(tmp, out)


def _reraise(exc: BaseException, out: Path) -> NoReturn:
    """Raise ``exc`` again; an OS error becomes an ArchiveError naming the file."""
    if isinstance(exc, OSError):
        culprit = exc.filename or out
        raise ArchiveError(f"cannot write {out}: {exc.strerror or exc} ({culprit})") from exc
    raise exc
