"""Archive intake: a registration url -> an unpacked directory with its manifest.

The url is checked against ``allowed_urls``, downloaded (http/https) or found (a model store
name, ``file://``) by fetch.py, unpacked by the one safe unpacker into the server's private
directory off the event loop (a large archive never blocks it) within the configured
limits (``max_archive_size``, ``max_archive_entries``, ``max_archive_ratio``), and its
manifest read; every failure leaves nothing behind. Models and workflows come in the same
way."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

from dagserve.archiver import ArchiveError, unpack
from dagserve.archiver.unpack import DEFAULT_MAX_FILES, DEFAULT_MAX_RATIO, DEFAULT_MAX_TOTAL_BYTES

from .errors import BadRequestError
from .fetch import fetch_archive

M = TypeVar("M")


class ArchiveIntake:
    MAX_ARCHIVE_BYTES = 8 << 30

    def __init__(self, allowed_urls: tuple[str, ...], work_dir: Path, *,
                 max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                 max_files: int = DEFAULT_MAX_FILES, max_ratio: float = DEFAULT_MAX_RATIO):
        self.allowed_urls = allowed_urls
        self.work_dir = work_dir
        self.limits = {"max_total_bytes": max_total_bytes, "max_files": max_files,
                       "max_ratio": max_ratio}
        self.unpack_dir = work_dir / "models"
        self.unpack_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def receive(self, url: str, store: Path | None, read_manifest: Callable[[Path], M],
                      kind: str) -> tuple[Path, M]:
        """Fetch, unpack and read the manifest of the archive at ``url``; ``kind`` ("model"
        or "workflow") names it in errors. The caller owns the returned directory."""
        archive, temporary = await self.fetch(url, store)
        try:
            directory = await self.unpack(archive, Path(url).stem)
        finally:
            if temporary:
                shutil.rmtree(archive.parent, ignore_errors=True)
        try:
            return directory, read_manifest(directory)
        except ArchiveError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise BadRequestError(f"Invalid {kind} archive {url}: {exc}") from None
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    # -- url -> unpacked directory -------------------------------------------------------

    async def fetch(self, url: str, store: Path | None) -> tuple[Path, bool]:
        """Local path of the archive named by ``url``; True when it is a temporary download
        (see fetch.py for what ``allowed_urls`` lets through)."""
        return await fetch_archive(url, store, self.allowed_urls, self.work_dir,
                                   self.MAX_ARCHIVE_BYTES)

    async def unpack(self, archive: Path, prefix: str) -> Path:
        dest = Path(tempfile.mkdtemp(prefix=prefix + "-", dir=self.unpack_dir))
        dest.rmdir()
        try:
            return await asyncio.to_thread(unpack, archive, dest, **self.limits)
        except ArchiveError as exc:
            raise BadRequestError(f"Invalid archive {archive.name}: {exc}") from None
