"""Token authorization as TorchServe 0.12 does it.

``key_file.json`` in the working directory (mode 0600) holds three keys::

    {
      "management": {"key": "...", "expiration time": "2024-02-16T21:12:24.801167Z"},
      "inference": {"key": "...", "expiration time": "..."},
      "API": {"key": "..."}
    }

Inference requests carry ``Authorization: Bearer <inference key>``, management requests the
management key. ``/token?type=management|inference`` on the management port, authorized
with the API key (which never expires), replaces that key and its expiry in the file.
Keys expire ``token_expiration_min`` minutes (default 60) after they were made.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Awaitable, Callable, Iterable

from aiohttp import web

from .errors import BadRequestError, ConfigError, TokenAuthError
from .files import write_atomically

log = logging.getLogger("dagserve.auth")

INFERENCE = "inference"
MANAGEMENT = "management"
API = "API"
KINDS = (MANAGEMENT, INFERENCE, API)
ROTATABLE = (MANAGEMENT, INFERENCE)
DEFAULT_EXPIRATION_MIN = 60.0
TOKEN_PATH = "/token"

_BEARER = re.compile(r"^Bearer\s+(\S+)$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Key:
    value: str
    expires_at: float | None  # unix time; None: never (the API key)

    @property
    def bearer(self) -> bytes:
        return b"Bearer " + self.value.encode()

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at


def new_key() -> str:
    return secrets.token_urlsafe(24)


def format_time(ts: float) -> str:
    """Java's ``Instant.toString()`` as TorchServe writes it: ``2024-02-16T21:12:24.801167Z``."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    # Java may write nanoseconds; Python's parser takes at most microseconds.
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", value)
    if m and m.group(2) and len(m.group(2)) > 7:
        value = m.group(1) + m.group(2)[:7] + m.group(3)
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


class KeyStore:
    """The three keys and the file that shows them to the server's owner. ``check`` is on
    every request's path: it compares the header with a cached ``b"Bearer <key>"`` in
    constant time and looks at the clock once."""

    def __init__(self, path: Path, keys: dict[str, Key],
                 expiration_min: float = DEFAULT_EXPIRATION_MIN) -> None:
        if set(keys) != set(KINDS):
            raise ValueError(f"keys must be exactly {KINDS}, got {sorted(keys)}")
        _check_expiration(expiration_min)
        self.path = Path(path)
        self.expiration_min = float(expiration_min)
        self._keys = dict(keys)
        self._bearers = {kind: key.bearer for kind, key in keys.items()}

    # ---- making and loading -------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, expiration_min: float = DEFAULT_EXPIRATION_MIN) -> "KeyStore":
        """Fresh keys for all three kinds, written to ``path`` (what TorchServe does at
        every start)."""
        _check_expiration(expiration_min)
        expires = time.time() + expiration_min * 60
        store = cls(path, {MANAGEMENT: Key(new_key(), expires), INFERENCE: Key(new_key(), expires),
                           API: Key(new_key(), None)}, expiration_min)
        store.save()
        return store

    @classmethod
    def load_or_create(cls, path: Path,
                       expiration_min: float = DEFAULT_EXPIRATION_MIN) -> "KeyStore":
        """Keep the keys of an existing key file, so clients holding them survive a restart;
        an expired management or inference key is replaced. The file is only trusted when it
        is a regular file of this user that nobody else can read or write (mode 0600) and has
        TorchServe's layout; otherwise (or when there is none) all keys are new. The file is
        rewritten either way."""
        _check_expiration(expiration_min)
        path = Path(path)
        keys = _read_trusted(path)
        if keys is None:
            return cls.create(path, expiration_min)
        now = time.time()
        for kind in ROTATABLE:
            if keys[kind].expired(now):
                keys[kind] = Key(new_key(), now + expiration_min * 60)
        store = cls(path, keys, expiration_min)
        store.save()
        return store

    def save(self) -> None:
        """Write the key file atomically (a temporary file renamed over it), mode 0600."""
        data = {
            MANAGEMENT: {"key": self._keys[MANAGEMENT].value,
                         "expiration time": format_time(self._keys[MANAGEMENT].expires_at or 0)},
            INFERENCE: {"key": self._keys[INFERENCE].value,
                        "expiration time": format_time(self._keys[INFERENCE].expires_at or 0)},
            API: {"key": self._keys[API].value},
        }
        _write_private(self.path, json.dumps(data, indent=2).encode())

    def delete_file(self) -> None:
        """Remove the key file (for a server that wants no keys left behind after it stops)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    # ---- use ----------------------------------------------------------------------------

    def key(self, kind: str) -> Key:
        return self._keys[_kind(kind)]

    def check(self, kind: str, header_value: str | None) -> bool:
        """Whether an ``Authorization`` header value holds the unexpired key of ``kind``
        (``"inference"``, ``"management"`` or ``"API"``). Like TorchServe, any run of
        whitespace may follow ``Bearer``."""
        if header_value is None:
            return False
        expected = self._bearers.get(kind)
        if expected is None:
            raise ValueError(f"unknown key kind {kind!r}; expected one of {', '.join(KINDS)}")
        given = header_value.encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            match = _BEARER.match(header_value)
            if match is None or not hmac.compare_digest(
                    match.group(1).encode("utf-8", "surrogateescape"), expected[7:]):
                return False
        expires_at = self._keys[kind].expires_at
        return expires_at is None or time.time() < expires_at

    def rotate(self, kind: str) -> Key:
        """A new management or inference key with a fresh expiry, written to the file."""
        if kind not in ROTATABLE:
            raise ValueError(f"only the {MANAGEMENT} and {INFERENCE} keys can be replaced, "
                             f"not {kind!r}")
        key = Key(new_key(), time.time() + self.expiration_min * 60)
        self._keys[kind] = key
        self._bearers[kind] = key.bearer
        self.save()
        log.info("replaced the %s key; it expires at %s", kind, format_time(key.expires_at or 0))
        return key


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown key kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def _check_expiration(expiration_min: float) -> None:
    if not isinstance(expiration_min, (int, float)) or expiration_min <= 0:
        raise ConfigError(f"token_expiration_min must be a positive number of minutes, "
                          f"got {expiration_min!r}")


def _read_trusted(path: Path) -> dict[str, Key] | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("key file %s is not a private regular file of this user; making new keys",
                    path)
        return None
    try:
        data = json.loads(path.read_bytes())
        keys = {kind: Key(_key_text(data[kind]["key"]), parse_time(data[kind]["expiration time"]))
                for kind in ROTATABLE}
        keys[API] = Key(_key_text(data[API]["key"]), None)
        return keys
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("key file %s does not have the expected layout (%s); making new keys",
                    path, exc)
        return None


def _key_text(value: object) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"a key must be a non-empty string without spaces, got {value!r}")
    return value


def _write_private(path: Path, data: bytes) -> None:
    try:
        write_atomically(path, data, mode=0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write key file {path}: {exc.strerror}") from None


# ---- aiohttp ------------------------------------------------------------------------------

def make_auth_middleware(store: KeyStore | None, kind: str,
                         exempt: Iterable[tuple[str, str]] = frozenset({("OPTIONS", "/")})):
    """An aiohttp middleware that lets a request through only with the ``kind`` key
    (``"inference"`` or ``"management"``); otherwise it raises ``TokenAuthError`` (400, the
    error middleware writes the body). ``exempt`` holds ``(METHOD, path)`` pairs that need no
    key. On the management app ``/token`` is left to ``token_handler``, which wants the API
    key. Returns ``None`` when ``store`` is ``None`` (auth disabled): install nothing."""
    if kind not in ROTATABLE:
        raise ValueError(f"kind must be {MANAGEMENT!r} or {INFERENCE!r}, got {kind!r}")
    if store is None:
        return None
    exempt_pairs = frozenset((m.upper(), p) for m, p in exempt)
    skip_token = kind == MANAGEMENT
    check = store.check

    @web.middleware
    async def token_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not check(kind, request.headers.get("Authorization")):
            # Looked at only when the key is wrong, to keep the common path short.
            path = request.path
            if (request.method, path) not in exempt_pairs and not (
                    skip_token and path == TOKEN_PATH):
                raise TokenAuthError()
        return await handler(request)

    return token_auth


def token_handler(store: KeyStore) -> Handler:
    """The ``/token?type=management|inference`` handler for the management app (any method;
    TorchServe documents GET). Authorized with the API key; replaces that key in the key
    file. As in TorchServe, success is a 200 with an empty body: the new key is read from the
    file."""

    async def token(request: web.Request) -> web.StreamResponse:
        if not store.check(API, request.headers.get("Authorization")):
            raise TokenAuthError()
        kind = request.query.get("type")
        if kind not in ROTATABLE:
            given = "no type" if kind is None else f"type={kind!r}"
            raise BadRequestError(f"Token type must be given as type=management or "
                                  f"type=inference, got {given}")
        try:
            store.rotate(kind)
        except ConfigError as exc:
            log.error("%s", exc.message)
            raise
        return web.Response(status=200, body=b"", content_type="application/json")

    return token
