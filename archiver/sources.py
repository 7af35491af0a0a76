"""What goes into an archive: input files mapped to their names inside it.

Mirrors torch-model-archiver 0.12.0: named files land flat at the root under their base
name; an ``--extra-files`` directory contributes its contents (sub-directories kept),
dot-files are kept, dot-folders, ``__pycache__`` and ``__MACOSX`` are skipped; a later
file with the same name replaces an earlier one.  Symlinks are followed, as TorchServe
copies through them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dagserve.archiver.errors import ArchiveError
from dagserve.archiver.handler_names import BUILTIN_HANDLERS, parse_handler

SKIPPED_DIR_NAMES = frozenset({"__pycache__", "__MACOSX"})

ExtraFiles = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None


@dataclass(frozen=True)
class HandlerRef:
    """A handler argument resolved: what the manifest says, and which file to copy."""

    manifest_value: str
    source: Path | None  # None for a built-in handler


def resolve_model_handler(handler: str) -> HandlerRef:
    """Resolve ``--handler``: a built-in name, or ``path/file[.py][:function]``.

    As in TorchServe, the manifest keeps the argument's base name (``file.py:function``)
    and ``.py`` is appended to the file when missing.
    """
    if handler in BUILTIN_HANDLERS:
        return HandlerRef(handler, None)
    module = handler.partition(":")[0]
    if not module:
        raise ArchiveError(f"invalid handler {handler!r}: no file before ':'")
    try:
        parse_handler(handler)
    except ValueError as exc:
        raise ArchiveError(f"invalid handler: {exc}") from None
    path = Path(module if module.endswith(".py") else module + ".py")
    if not path.is_file():
        if "/" not in module and not module.endswith(".py"):
            raise ArchiveError(
                f"handler {handler!r} is neither a built-in handler "
                f"({', '.join(sorted(BUILTIN_HANDLERS))}) nor an existing file ({path})"
            )
        raise ArchiveError(f"handler file not found: {path}")
    return HandlerRef(os.path.basename(handler), path)


def require_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path, or ArchiveError when it is not an existing regular file."""
    p = Path(path)
    if not p.exists():
        raise ArchiveError(f"{what} not found: {p}")
    if not p.is_file():
        raise ArchiveError(f"{what} is not a regular file: {p}")
    return p


def split_extra_files(extra_files: ExtraFiles) -> list[Path]:
    """``--extra-files``: a comma-separated string or a list of paths; blanks ignored."""
    if extra_files is None:
        return []
    if isinstance(extra_files, (str, os.PathLike)):
        items: Iterable[str | os.PathLike[str]] = str(extra_files).split(",")
    else:
        items = extra_files
    paths = []
    for item in items:
        text = str(item).strip() if isinstance(item, str) else os.fspath(item)
        if text:
            paths.append(Path(text))
    return paths


class FileSet:
    """An ordered map from name inside the archive to the file that provides it."""

    def __init__(self) -> None:
        self._files: dict[str, Path] = {}

    def add(self, arcname: str, source: Path) -> None:
        self._files[arcname] = source

    def add_file(self, source: Path) -> None:
        """A named file: flat at the root under its base name."""
        self.add(source.name, source)

    def add_extra(self, path: Path) -> None:
        """One ``--extra-files`` item: a file, or a directory whose contents are added."""
        if path.is_file():
            self.add_file(path)
        elif path.is_dir():
            self.add_dir_contents(path)
        elif path.exists() or path.is_symlink():
            raise ArchiveError(f"extra file is neither a file nor a directory: {path}")
        else:
            raise ArchiveError(f"extra file not found: {path}")

    def add_dir_contents(self, top: Path) -> None:
        """Every file under ``top``, named by its path relative to ``top``."""
        # Real paths of each walked directory and its ancestors: a child already among
        # them is a symlink loop and is not entered again.
        ancestors: dict[str, frozenset[str]] = {str(top): frozenset({os.path.realpath(top)})}
        for root, dirs, files in os.walk(top, onerror=_walk_error, followlinks=True):
            above = ancestors.pop(root)
            kept = []
            for name in sorted(dirs):
                if name.startswith(".") or name in SKIPPED_DIR_NAMES:
                    continue
                child = os.path.join(root, name)
                real = os.path.realpath(child)
                if real in above:
                    continue
                ancestors[child] = above | {real}
                kept.append(name)
            dirs[:] = kept
            for name in sorted(files):
                source = Path(root, name)
                _check_regular(source)
                self.add(source.relative_to(top).as_posix(), source)

    def discard(self, arcname: str) -> None:
        self._files.pop(arcname, None)

    def items(self) -> list[tuple[str, Path]]:
        """(arcname, source) pairs sorted by name, so archives are reproducible."""
        return sorted(self._files.items())

    def __len__(self) -> int:
        return len(self._files)


def _walk_error(exc: OSError) -> None:
    raise ArchiveError(f"cannot read extra files directory {exc.filename}: {exc.strerror}")


def _check_regular(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ArchiveError(f"broken symlink in extra files: {path}") from None
    except OSError as exc:
        raise ArchiveError(f"cannot read extra file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ArchiveError(f"not a regular file in extra files: {path}")
