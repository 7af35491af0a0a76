"""The one safe unpacker: the only code in dagserve that opens archives.

``unpack(src, dest)`` turns a model or workflow archive into a plain directory ``dest``:

- a zip (``.mar``, ``.war``; recognised by content, not by name) is extracted as is;
- a ``.tar.gz`` / ``.tgz`` has the first component of every path stripped, because
  ``--archive-format tgz`` puts everything under ``<name>/`` (a top-level file stays);
- a directory is **copied** (not used in place, so the server never works on files a user
  may still change); a directory holding nothing but one sub-directory is unwrapped, as
  TorchServe does for SageMaker-style model directories.  Symlinks in a directory are
  followed (the operator placed them).

Refused, with an ArchiveError naming the reason: absolute paths, ``..`` components, zip
symlinks, tar symlinks or hard links that resolve outside the target, device files and
other special entries, encrypted zip entries, more than ``max_files`` entries, more than
``max_total_bytes`` of content (declared sizes are checked first and the bytes actually
written are counted, since headers can lie), and content that expands more than
``max_ratio`` times (a zip entry over its compressed size, or everything written over the
archive's size; only past ``RATIO_FLOOR`` bytes, so small files of zeros stay fine).
The server passes its ``max_archive_size``, ``max_archive_entries`` and
``max_archive_ratio`` settings.  Extraction happens in a temporary
directory next to ``dest`` that is renamed to ``dest`` only on success, so a failure
leaves nothing behind.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO

from dagserve.archiver.errors import ArchiveError

DEFAULT_MAX_TOTAL_BYTES = 1024**3
DEFAULT_MAX_FILES = 10_000
DEFAULT_MAX_RATIO = 100
RATIO_FLOOR = 1 << 20  # expansion is judged only past this many bytes
_CHUNK = 1 << 20
_CONTAINER_DIRS = frozenset({"MAR-INF", "WAR-INF"})


def unpack(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> Path:
    """Extract (or copy) ``src`` into the new directory ``dest`` and return ``dest``.

    ``dest`` must not exist; its parent must.  Raises ArchiveError on anything unsafe,
    corrupt or over the limits, leaving no trace.
    """
    src, dest = Path(src), Path(dest)
    if not (src.exists() or src.is_symlink()):
        raise ArchiveError(f"archive not found: {src}")
    if dest.exists() or dest.is_symlink():
        raise ArchiveError(f"destination already exists: {dest}")
    if not dest.parent.is_dir():
        raise ArchiveError(f"destination's parent directory does not exist: {dest.parent}")
    if src.is_dir() and dest.parent.resolve().is_relative_to(src.resolve()):
        raise ArchiveError(f"destination {dest} is inside the directory being copied: {src}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".unpacking", dir=dest.parent))
    try:
        budget = _Budget(src, max_total_bytes, max_files,
                         None if src.is_dir() else max_ratio * max(src.stat().st_size, 1))
        if src.is_dir():
            _copy_tree(_unwrap(src), tmp, budget)
        else:
            kind = _sniff(src)
            if kind == "zip":
                _extract_zip(src, tmp, budget)
            else:
                _extract_tgz(src, tmp, budget)
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if exc.filename else ""
            raise ArchiveError(f"{src}: cannot unpack: {exc.strerror or exc}{where}") from exc
        raise
    return dest


class _Budget:
    """Counts entries and bytes against the limits."""

    def __init__(self, src: Path, max_total_bytes: int, max_files: int,
                 max_expanded: float | None = None) -> None:
        self.src = src
        self.max_bytes = max_total_bytes
        self.max_files = max_files
        self.max_expanded = max_expanded  # bytes the archive may expand to (ratio limit)
        self.files = 0
        self.declared = 0
        self.written = 0

    def count(self, entries: int = 1) -> None:
        self.files += entries
        if self.files > self.max_files:
            raise ArchiveError(f"{self.src}: too many files: more than the limit of {self.max_files} entries")

    def declare(self, size: int) -> None:
        self.declared += size
        if self.declared > self.max_bytes:
            raise ArchiveError(
                f"{self.src}: too large: declares {self.declared} bytes, over the limit of {self.max_bytes}"
            )

    def write(self, size: int) -> None:
        self.written += size
        if self.written > self.max_bytes:
            raise ArchiveError(
                f"{self.src}: too large: expands to more than the limit of {self.max_bytes} bytes"
            )
        if self.max_expanded is not None and self.written > max(self.max_expanded, RATIO_FLOOR):
            raise ArchiveError(f"{self.src}: expands more than the compression ratio limit allows "
                               f"(over {int(self.max_expanded)} bytes)")

    def check_ratio(self, name: str, size: int, compressed: int) -> None:
        """One zip entry: refuse it before writing when it expands past the ratio."""
        if self.max_expanded is None or size <= RATIO_FLOOR:
            return
        ratio = self.max_expanded / max(self.src.stat().st_size, 1)
        if size > ratio * max(compressed, 1):
            raise ArchiveError(f"{self.src}: entry {name!r} expands {size // max(compressed, 1)} "
                               f"times, over the compression ratio limit of {ratio:g}")


# ---- names ---------------------------------------------------------------------------------

_DRIVE = re.compile(r"[A-Za-z]:")


def _safe_parts(src: Path, name: str) -> tuple[str, ...]:
    """The components of an entry name, or ArchiveError if it could escape the target."""
    path = name.replace("\\", "/")
    if "\x00" in path:
        raise ArchiveError(f"{src}: refusing entry {name!r}: NUL in name")
    if path.startswith("/") or _DRIVE.match(path):
        raise ArchiveError(f"{src}: refusing absolute path {name!r}")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"{src}: refusing path with '..' component: {name!r}")
    return parts


def _target(root: Path, parts: tuple[str, ...]) -> Path:
    """The file for ``parts`` under ``root``, its parent directories created."""
    target = root.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        raise ArchiveError(f"entry {'/'.join(parts)!r} is both a directory and a file")
    return target


def _write(target: Path, reader: IO[bytes], budget: _Budget, executable: bool, limit: int | None = None) -> int:
    """Copy ``reader`` to ``target`` counting bytes; never follows a symlink at ``target``."""
    mode = 0o755 if executable else 0o644
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    total = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := reader.read(_CHUNK):
            total += len(chunk)
            if limit is not None and total > limit:
                raise ArchiveError(
                    f"{budget.src}: entry {target.name!r} holds more bytes than its declared size {limit}"
                )
            budget.write(len(chunk))
            out.write(chunk)
    return total


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- formats ---------------------------------------------------------------------------------


def _sniff(src: Path) -> str:
    with src.open("rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b":
        return "tgz"
    if zipfile.is_zipfile(src):
        return "zip"
    raise ArchiveError(f"{src}: not a zip (.mar/.war) or tar.gz archive")


def _extract_zip(src: Path, root: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(src) as zf:
            infos = zf.infolist()
            budget.count(len(infos))
            budget.declare(sum(info.file_size for info in infos))
            for info in infos:
                budget.check_ratio(info.filename, info.file_size, info.compress_size)
            for info in infos:
                _extract_zip_entry(zf, info, src, root, budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        raise ArchiveError(f"{src}: corrupt or unsupported zip: {exc}") from exc


def _extract_zip_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, src: Path, root: Path, budget: _Budget) -> None:
    parts = _safe_parts(src, info.filename)
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"{src}: refusing symlink entry {info.filename!r}")
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveError(f"{src}: refusing special file (device, fifo or socket) {info.filename!r}")
    if info.is_dir() or info.filename.endswith("\\") or kind == stat.S_IFDIR:
        root.joinpath(*parts).mkdir(parents=True, exist_ok=True)
        return
    if not parts:
        raise ArchiveError(f"{src}: refusing entry with an empty name")
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{src}: refusing encrypted entry {info.filename!r}")
    target = _target(root, parts)
    with zf.open(info) as reader:
        _write(target, reader, budget, bool(mode & 0o111), limit=info.file_size)


def _extract_tgz(src: Path, root: Path, budget: _Budget) -> None:
    regular: set[tuple[str, ...]] = set()
    symlinks: list[tuple[tuple[str, ...], str, str]] = []
    try:
        with tarfile.open(src, mode="r:gz") as tar:
            for member in tar:
                budget.count()
                _safe_parts(src, member.name)
                parts = _strip_top(src, member)
                if parts is None:
                    continue
                if member.isdir():
                    root.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                elif member.isreg():
                    budget.declare(member.size)
                    reader = tar.extractfile(member)
                    assert reader is not None  # a regular member always has data
                    with reader:
                        _write(_target(root, parts), reader, budget, bool(member.mode & 0o111))
                    regular.add(parts)
                elif member.issym():
                    _check_symlink(src, member, parts)
                    symlinks.append((parts, member.linkname, member.name))
                elif member.islnk():
                    _extract_hardlink(src, root, member, parts, regular, budget)
                    regular.add(parts)
                elif member.ischr() or member.isblk():
                    raise ArchiveError(f"{src}: refusing device file {member.name!r}")
                else:
                    raise ArchiveError(f"{src}: refusing special entry (fifo or unknown type) {member.name!r}")
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{src}: corrupt tar.gz: {exc}") from exc
    _make_symlinks(src, root, symlinks)


def _strip_top(src: Path, member: tarfile.TarInfo) -> tuple[str, ...] | None:
    """Drop the first path component (``<name>/``); None for the top directory itself."""
    name = member.name.replace("\\", "/")
    if "/" not in name:
        if member.isdir():
            return None
        rest = name  # a file at the top level stays there, as in TorchServe
    else:
        rest = name.split("/", 1)[1]
    parts = _safe_parts(src, rest)
    if not parts:
        if member.isdir():
            return None
        raise ArchiveError(f"{src}: refusing entry {member.name!r}: no file name")
    return parts


def _check_symlink(src: Path, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
    target = member.linkname.replace("\\", "/")
    if not target or target.startswith("/") or _DRIVE.match(target) or "\x00" in target:
        raise ArchiveError(
            f"{src}: refusing symlink {member.name!r} -> {member.linkname!r}: absolute or empty target"
        )
    resolved = posixpath.normpath(posixpath.join(*parts[:-1], target) if parts[:-1] else target)
    if resolved == ".." or resolved.startswith("../"):
        raise ArchiveError(
            f"{src}: refusing symlink {member.name!r} -> {member.linkname!r}: points outside the archive"
        )


def _extract_hardlink(
    src: Path,
    root: Path,
    member: tarfile.TarInfo,
    parts: tuple[str, ...],
    regular: set[tuple[str, ...]],
    budget: _Budget,
) -> None:
    """A hard link becomes a copy of a regular file extracted before it."""
    _safe_parts(src, member.linkname)
    link = tarfile.TarInfo(member.linkname)
    link.type = tarfile.REGTYPE
    target_parts = _strip_top(src, link)
    if target_parts is None or target_parts not in regular:
        raise ArchiveError(
            f"{src}: refusing hard link {member.name!r} -> {member.linkname!r}: "
            "not a file extracted from this archive"
        )
    source = root.joinpath(*target_parts)
    budget.declare(source.stat().st_size)
    with source.open("rb") as reader:
        _write(_target(root, parts), reader, budget, bool(member.mode & 0o111))


def _make_symlinks(src: Path, root: Path, symlinks: list[tuple[tuple[str, ...], str, str]]) -> None:
    """Create the symlinks last, then check every one resolves inside ``root``.

    Created after all files so no file is ever written through a link; checked after all
    are created because a link's meaning can depend on links made after it.
    """
    for parts, target, name in symlinks:
        path = root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            raise ArchiveError(f"{src}: refusing symlink {name!r}: its path is already used by another entry")
        os.symlink(target, path)
    real_root = os.path.realpath(root)
    for parts, target, name in symlinks:
        real = os.path.realpath(root.joinpath(*parts))
        if real != real_root and not real.startswith(real_root + os.sep):
            raise ArchiveError(f"{src}: refusing symlink {name!r} -> {target!r}: resolves outside the archive")


def _unwrap(src: Path) -> Path:
    """A directory whose only entry is a sub-directory stands for that sub-directory."""
    children = list(src.iterdir())
    if len(children) == 1 and children[0].is_dir() and children[0].name not in _CONTAINER_DIRS:
        return children[0]
    return src


def _copy_tree(src: Path, root: Path, budget: _Budget) -> None:
    """Copy a directory's files (following symlinks, skipping loops) under the limits."""
    ancestors: dict[str, frozenset[str]] = {str(src): frozenset({os.path.realpath(src)})}

    def fail(exc: OSError) -> None:
        raise exc

    for top, dirs, files in os.walk(src, onerror=fail, followlinks=True):
        above = ancestors.pop(top)
        rel = Path(top).relative_to(src)
        kept = []
        for name in dirs:
            child = os.path.join(top, name)
            real = os.path.realpath(child)
            if real in above:
                continue
            ancestors[child] = above | {real}
            kept.append(name)
            budget.count()
            (root / rel / name).mkdir()
        dirs[:] = kept
        for name in files:
            budget.count()
            path = Path(top, name)
            try:
                info = path.stat()
            except FileNotFoundError:
                raise ArchiveError(f"{src}: broken symlink {path}") from None
            if not stat.S_ISREG(info.st_mode):
                raise ArchiveError(f"{src}: refusing special file (device, fifo or socket) {path}")
            budget.declare(info.st_size)
            with path.open("rb") as reader:
                _write(root / rel / name, reader, budget, bool(info.st_mode & 0o111))
