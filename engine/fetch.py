r"""Where a registration's ``url`` may point, and fetching it.

``allowed_urls`` (TorchServe's key: regular expressions, a URL must match one in full) is
checked against what will really be read, not against the text the client sent:

- the path is percent-decoded and a ``..`` segment is refused, so
  ``file:///allowed/%2e%2e/other/x.mar`` cannot leave ``/allowed``; patterns are matched
  against the URL with its decoded, normalised path;
- an HTTP redirect is followed by hand, at most ``MAX_REDIRECTS`` times, and every hop is
  checked like the first (a redirect to ``file:`` or to a URL no pattern allows ends the
  download before the next host is contacted);
- loopback, link-local and unspecified addresses (``127.0.0.0/8``, ``::1``,
  ``169.254.0.0/16`` with the cloud metadata endpoints, ``fe80::/10``, ``0.0.0.0``) are
  refused unless a pattern that matches the URL names the host itself
  (``http://127\.0\.0\.1:8000/.*``): the default ``http(s)?://.*`` does not. A host
  name is checked on the addresses it resolves to, and the connection goes to exactly those
  addresses (no second lookup to rebind).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shutil
import socket
import tempfile
import urllib.parse
from pathlib import Path

from .errors import BadRequestError, ModelNotFoundError

MAX_REDIRECTS = 5
DOWNLOAD_TIMEOUT_S = 300
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class UrlRefused(ModelNotFoundError):
    """The URL (or a hop of its redirects) is not allowed."""


def decoded_path(url: str) -> str:
    """The URL's path as it will be used: percent-decoded; ``..`` segments refused."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    if ".." in path.replace("\\", "/").split("/"):
        raise UrlRefused(f"Relative path is not allowed in url: {url}")
    return path


def canonical_url(url: str) -> str:
    """``url`` with its path decoded and normalised (what ``allowed_urls`` is matched
    against)."""
    parts = urllib.parse.urlsplit(url)
    path = decoded_path(url)
    if path:
        path = posixpath.normpath(path) + ("/" if path.endswith("/") and path != "/" else "")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://", "file://"))


def check_url(url: str, allowed: tuple[str, ...]) -> None:
    """Refuse ``url`` unless an ``allowed_urls`` pattern matches it (``http(s)``/``file``
    URLs; a bare name in the store is checked where it is opened). Raises UrlRefused, or
    BadRequestError for a URL no file or host can have."""
    if not url or any(ord(c) < 32 or c == "\x7f" for c in url):
        raise BadRequestError(f"Invalid url {url!r}: empty or with control characters")
    if ".." in url:
        raise UrlRefused(f"Relative path is not allowed in url: {url}")
    if not is_remote(url):
        return
    matching = matching_patterns(url, allowed)
    if not matching:
        raise UrlRefused(f"Given URL {url} does not match any allowed URL(s)")
    host = urllib.parse.urlsplit(url).hostname
    if url.startswith("http") and host and _is_ip(host) and is_internal(host) and \
            not names_host(matching, host):
        raise UrlRefused(internal_message(url))


def matching_patterns(url: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The ``allowed_urls`` patterns that match ``url`` (its decoded, normalised form)."""
    canonical = canonical_url(url)
    return tuple(p for p in allowed if re.fullmatch(p, canonical))


def names_host(patterns: tuple[str, ...], host: str) -> bool:
    """True when a pattern spells ``host`` out (literally or regex-escaped)."""
    escaped = re.escape(host)
    return any(host in p or escaped in p for p in patterns)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def is_internal(address: str) -> bool:
    """Loopback, link-local or unspecified (also as an IPv4-mapped IPv6 address)."""
    ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified


def internal_message(url: str) -> str:
    return (f"Given URL {url} refers to a loopback or link-local address; name the host in "
            "an allowed_urls pattern to allow it")


def file_url_path(url: str, allowed: tuple[str, ...]) -> Path:
    """The local path of an allowed ``file://`` URL (decoded and normalised)."""
    check_url(url, allowed)
    return Path(urllib.parse.urlsplit(canonical_url(url)).path)


def _guarded_resolver(refused: list[str]):
    """An aiohttp resolver that refuses names resolving to internal addresses unless one of
    its ``patterns`` (those matching the URL being fetched) names the host."""
    from aiohttp.resolver import DefaultResolver

    class GuardedResolver(DefaultResolver):  # type: ignore[misc, valid-type]
        patterns: tuple[str, ...] = ()

        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET):
            results = await super().resolve(host, port, family)
            if not names_host(self.patterns, host) and \
                    any(is_internal(r["host"]) for r in results):
                refused.append(host)
                raise OSError(f"{host} resolves to a loopback or link-local address")
            return results

    return GuardedResolver()


async def download(url: str, dest: Path, max_bytes: int, allowed: tuple[str, ...]) -> None:
    """Download ``url`` to ``dest``, following redirects only to allowed URLs."""
    import aiohttp

    refused: list[str] = []
    current = url
    try:
        timeout = aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_S)
        resolver = _guarded_resolver(refused)
        # no connection reuse: each hop's host is resolved (and checked) afresh
        connector = aiohttp.TCPConnector(resolver=resolver, force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            for _ in range(MAX_REDIRECTS + 1):
                check_url(current, allowed)
                if not current.startswith(("http://", "https://")):
                    raise UrlRefused(f"Download of {url} was redirected to {current}, "
                                     "which is not an http(s) URL")
                resolver.patterns = matching_patterns(current, allowed)
                async with session.get(current, allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS and "Location" in resp.headers:
                        current = urllib.parse.urljoin(current, resp.headers["Location"])
                        continue
                    if resp.status != 200:
                        raise BadRequestError(f"Failed to download archive from: {url} "
                                              f"(HTTP {resp.status})")
                    await _save(resp, dest, max_bytes, url)
                    return
            raise BadRequestError(f"Failed to download archive from: {url} (more than "
                                  f"{MAX_REDIRECTS} redirects)")
    except UrlRefused as exc:
        if current != url:
            raise UrlRefused(f"Download of {url} was redirected: {exc.message}") from None
        raise
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if refused:
            raise UrlRefused(internal_message(current)) from None
        raise BadRequestError(f"Failed to download archive from: {url} ({exc})") from None


async def _save(resp, dest: Path, max_bytes: int, url: str) -> None:
    size = 0
    with dest.open("wb") as fh:
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > max_bytes:
                raise BadRequestError(f"Failed to download archive from: {url} "
                                      f"(larger than {max_bytes} bytes)")
            fh.write(chunk)


async def fetch_archive(url: str, store: Path | None, allowed: tuple[str, ...],
                        work_dir: Path, max_bytes: int) -> tuple[Path, bool]:
    """The local path of the archive ``url`` names (downloaded into a new directory under
    ``work_dir``, or a ``file://`` path, or a name in ``store``); True when it is a
    temporary download the caller deletes (with its directory)."""
    check_url(url, allowed)
    if url.startswith(("http://", "https://")):
        name = Path(decoded_path(url)).name or "download.mar"
        tmp = Path(tempfile.mkdtemp(dir=work_dir)) / name
        try:
            await download(url, tmp, max_bytes, allowed)
        except BaseException:
            shutil.rmtree(tmp.parent, ignore_errors=True)
            raise
        return tmp, True
    if url.startswith("file://"):
        path = file_url_path(url, allowed)
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
