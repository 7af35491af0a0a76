"""Archive intake: a registration url -> an unpacked directory with its manifest.

The url is checked against ``allowed_urls``, downloaded (http/https) or found (a model store
name, ``file://``), unpacked by the one safe unpacker into the server's private directory
off the event loop, and its manifest read; every failure leaves nothing behind. Models and
workflows come in the same way."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Callable, TypeVar

from dagserve.archiver import ArchiveError, unpack

from .errors import BadRequestError, ModelNotFoundError

M = TypeVar("M")


def check_url(url: str, allowed: tuple[str, ...]) -> None:
    if ".." in url:
        raise ModelNotFoundError(f"Relative path is not allowed in url: {url}")
    if re.match(r"^(https?|file)://", url) and not any(re.fullmatch(p, url) for p in allowed):
        raise ModelNotFoundError(f"Given URL {url} does not match any allowed URL(s)")


async def download(url: str, dest: Path, max_bytes: int) -> None:
    import aiohttp

    try:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url) as resp:
                if resp.status != 200:
                    raise BadRequestError(f"Failed to download archive from: {url} "
                                          f"(HTTP {resp.status})")
                size = 0
                with dest.open("wb") as fh:
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        size += len(chunk)
                        if size > max_bytes:
                            raise BadRequestError(f"Failed to download archive from: {url} "
                                                  f"(larger than {max_bytes} bytes)")
                        fh.write(chunk)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise BadRequestError(f"Failed to download archive from: {url} ({exc})") from None


class ArchiveIntake:
    MAX_ARCHIVE_BYTES = 8 << 30

    def __init__(self, allowed_urls: tuple[str, ...], work_dir: Path):
        self.allowed_urls = allowed_urls
        self.work_dir = work_dir
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
        """Local path of the archive named by ``url``; True when it is a temporary download."""
        check_url(url, self.allowed_urls)
        if url.startswith(("http://", "https://")):
            name = Path(urllib.parse.urlparse(url).path).name or "download.mar"
            tmp = Path(tempfile.mkdtemp(dir=self.work_dir)) / name
            try:
                await download(url, tmp, self.MAX_ARCHIVE_BYTES)
            except BaseException:
                shutil.rmtree(tmp.parent, ignore_errors=True)
                raise
            return tmp, True
        if url.startswith("file://"):
            path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
        else:
            if store is None:
                raise ModelNotFoundError(f"Model not found in model store: {url} "
                                         "(no model store configured)")
            path = (store / url.lstrip("/")).resolve()
            if not path.is_relative_to(store.resolve()):  # a link out of the store
                raise ModelNotFoundError(f"Model not found in model store: {url}")
        if not path.exists():
            raise ModelNotFoundError(f"Model not found in model store: {url}")
        return path, False

    async def unpack(self, archive: Path, prefix: str) -> Path:
        dest = Path(tempfile.mkdtemp(prefix=prefix + "-", dir=self.unpack_dir))
        dest.rmdir()
        try:
            return await asyncio.to_thread(unpack, archive, dest)
        except ArchiveError as exc:
            raise BadRequestError(f"Invalid archive {archive.name}: {exc}") from None
