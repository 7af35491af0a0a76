"""Token authorization: key_file.json, checks, expiry, rotation, the aiohttp middleware and
the /token handler."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dagserve.engine import auth
from dagserve.engine.auth import API, INFERENCE, MANAGEMENT, Key, KeyStore
from dagserve.engine.errors import ConfigError, DagserveError

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def file_keys(path: Path) -> dict:
    return json.loads(path.read_text())


def bearer(key: Key | str) -> str:
    return f"Bearer {key.value if isinstance(key, Key) else key}"


# ---- the key file --------------------------------------------------------------------------

def test_create_writes_torchserve_layout(tmp_path):
    path = tmp_path / "key_file.json"
    before = time.time()
    store = KeyStore.create(path)
    data = file_keys(path)
    assert list(data) == ["management", "inference", "API"]
    assert set(data["management"]) == {"key", "expiration time"}
    assert set(data["inference"]) == {"key", "expiration time"}
    assert set(data["API"]) == {"key"}
    for kind in (MANAGEMENT, INFERENCE):
        assert data[kind]["key"] == store.key(kind).value
        assert TIME_RE.match(data[kind]["expiration time"])
        expires = auth.parse_time(data[kind]["expiration time"])
        assert before + 59 * 60 < expires <= time.time() + 60 * 60 + 1
    assert data["API"]["key"] == store.key(API).value
    assert store.key(API).expires_at is None
    assert len({data[k]["key"] for k in data}) == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key_file.json"]  # no temp left


def test_file_is_private_even_with_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        KeyStore.create(tmp_path / "key_file.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "key_file.json").stat().st_mode) == 0o600


def test_expiration_minutes_honoured(tmp_path):
    store = KeyStore.create(tmp_path / "k.json", expiration_min=0.5)
    left = store.key(INFERENCE).expires_at - time.time()
    assert 0 < left <= 30


@pytest.mark.parametrize("bad", [0, -1, "60"])
def test_bad_expiration_rejected(tmp_path, bad):
    with pytest.raises(ConfigError, match="token_expiration_min"):
        KeyStore.create(tmp_path / "k.json", expiration_min=bad)


def test_time_format_round_trip_and_java_nanoseconds():
    ts = 1708117944.801167
    assert auth.format_time(ts) == "2024-02-16T21:12:24.801167Z"
    assert auth.parse_time(auth.format_time(ts)) == pytest.approx(ts, abs=1e-6)
    assert auth.parse_time("2024-02-16T21:12:24.801167123Z") == pytest.approx(ts, abs=1e-6)
    assert auth.parse_time("2024-02-16T21:12:24Z") == pytest.approx(1708117944.0)


def test_unwritable_location_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot write key file"):
        KeyStore.create(tmp_path / "missing-dir" / "key_file.json")


# ---- load_or_create ------------------------------------------------------------------------

def test_load_or_create_creates_when_absent(tmp_path):
    store = KeyStore.load_or_create(tmp_path / "key_file.json")
    assert file_keys(tmp_path / "key_file.json")["API"]["key"] == store.key(API).value


def test_load_or_create_keeps_valid_keys(tmp_path):
    path = tmp_path / "key_file.json"
    first = KeyStore.create(path)
    second = KeyStore.load_or_create(path)
    for kind in auth.KINDS:
        assert second.key(kind).value == first.key(kind).value
    assert second.check(INFERENCE, bearer(first.key(INFERENCE)))


def test_load_or_create_replaces_expired_keys(tmp_path):
    path = tmp_path / "key_file.json"
    past = time.time() - 10
    KeyStore(path, {MANAGEMENT: Key("m-old", past), INFERENCE: Key("i-ok", time.time() + 600),
                    API: Key("api-key", None)}).save()
    store = KeyStore.load_or_create(path)
    assert store.key(MANAGEMENT).value != "m-old"
    assert not store.key(MANAGEMENT).expired()
    assert store.key(INFERENCE).value == "i-ok"
    assert store.key(API).value == "api-key"
    assert file_keys(path)["management"]["key"] == store.key(MANAGEMENT).value


def test_load_or_create_distrusts_readable_file(tmp_path):
    path = tmp_path / "key_file.json"
    first = KeyStore.create(path)
    path.chmod(0o644)
    store = KeyStore.load_or_create(path)
    assert store.key(API).value != first.key(API).value
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_load_or_create_distrusts_symlink(tmp_path):
    real = tmp_path / "real.json"
    first = KeyStore.create(real)
    link = tmp_path / "key_file.json"
    link.symlink_to(real)
    store = KeyStore.load_or_create(link)
    assert store.key(API).value != first.key(API).value
    assert not link.is_symlink()  # replaced by a regular file
    assert file_keys(real)["API"]["key"] == first.key(API).value  # the target is untouched


@pytest.mark.parametrize("content", ["not json", "[]", '{"management": {}}',
                                     '{"management": {"key": "a b", "expiration time": "x"}}'])
def test_load_or_create_replaces_bad_file(tmp_path, content):
    path = tmp_path / "key_file.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    store = KeyStore.load_or_create(path)
    assert file_keys(path)["API"]["key"] == store.key(API).value


def test_load_or_create_reads_a_torchserve_file(tmp_path):
    path = tmp_path / "key_file.json"
    text = json.dumps({"management": {"key": "B-E5KSRM", "expiration time": "2999-02-16T21:12:24.801167Z"},
                       "inference": {"key": "gNRuA7dS", "expiration time": "2999-02-16T21:12:24.801148Z"},
                       "API": {"key": "yv9uQajP"}}, indent=2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    store = KeyStore.load_or_create(path)
    assert store.check(MANAGEMENT, "Bearer B-E5KSRM")
    assert store.check(INFERENCE, "Bearer gNRuA7dS")
    assert store.check(API, "Bearer yv9uQajP")


# ---- check, expiry, rotate -----------------------------------------------------------------

@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore.create(tmp_path / "key_file.json")


def test_check_accepts_only_the_right_key(store):
    inf, man, api = store.key(INFERENCE), store.key(MANAGEMENT), store.key(API)
    assert store.check(INFERENCE, bearer(inf))
    assert store.check(MANAGEMENT, bearer(man))
    assert store.check(API, bearer(api))
    assert store.check(INFERENCE, f"Bearer \t  {inf.value}")  # TorchServe: Bearer\s+
    assert not store.check(INFERENCE, bearer(man))
    assert not store.check(MANAGEMENT, bearer(inf))
    assert not store.check(MANAGEMENT, bearer(api))
    assert not store.check(INFERENCE, None)
    assert not store.check(INFERENCE, "")
    assert not store.check(INFERENCE, inf.value)  # no "Bearer"
    assert not store.check(INFERENCE, f"bearer {inf.value}")
    assert not store.check(INFERENCE, f"Bearer {inf.value}x")
    assert not store.check(INFERENCE, f"Bearer {inf.value} extra")
    assert not store.check(INFERENCE, "Bearer \udcff\u00e9")  # undecodable header bytes


def test_check_unknown_kind(store):
    with pytest.raises(ValueError, match="unknown key kind"):
        store.check("metrics", "Bearer x")


def test_expired_key_is_refused(tmp_path):
    now = time.time()
    store = KeyStore(tmp_path / "k.json", {MANAGEMENT: Key("m", now - 1), INFERENCE: Key("i", now + 600),
                                           API: Key("a", None)})
    assert not store.check(MANAGEMENT, "Bearer m")
    assert store.check(INFERENCE, "Bearer i")
    assert store.check(API, "Bearer a")
    new = store.rotate(MANAGEMENT)
    assert store.check(MANAGEMENT, bearer(new))


def test_rotate_replaces_key_and_file(store):
    path = store.path
    old_inf, old_man = store.key(INFERENCE), store.key(MANAGEMENT)
    new = store.rotate(INFERENCE)
    assert new.value != old_inf.value
    assert not store.check(INFERENCE, bearer(old_inf))
    assert store.check(INFERENCE, bearer(new))
    data = file_keys(path)
    assert data["inference"]["key"] == new.value
    assert data["management"]["key"] == old_man.value
    assert store.check(MANAGEMENT, bearer(old_man))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_api_key_cannot_be_rotated(store):
    with pytest.raises(ValueError, match="can be replaced"):
        store.rotate(API)


def test_keystore_needs_all_three_keys(tmp_path):
    with pytest.raises(ValueError, match="keys must be exactly"):
        KeyStore(tmp_path / "k.json", {INFERENCE: Key("i", None)})


# ---- aiohttp -------------------------------------------------------------------------------

@web.middleware
async def errors_as_json(request, handler):
    """What the lead's error middleware does with a DagserveError."""
    try:
        return await handler(request)
    except DagserveError as exc:
        return web.Response(status=exc.status, body=exc.body(), content_type="application/json")


async def ok(request):
    return web.json_response({"status": "Healthy"})


def app_for(store: KeyStore | None, kind: str, **kwargs) -> web.Application:
    middlewares = [errors_as_json]
    mw = auth.make_auth_middleware(store, kind, **kwargs)
    if mw is not None:
        middlewares.append(mw)
    app = web.Application(middlewares=middlewares)
    app.router.add_get("/ping", ok)
    app.router.add_route("OPTIONS", "/", ok)
    if store is not None and kind == MANAGEMENT:
        app.router.add_route("*", "/token", auth.token_handler(store))
    return app


async def with_client(app: web.Application, body):
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        return await body(client)


def run(app, body):
    return asyncio.run(with_client(app, body))


def test_middleware_inference(store):
    async def body(client):
        resp = await client.get("/ping")
        assert resp.status == 400
        assert await resp.json() == {
            "code": 400, "type": "InvalidKeyException",
            "message": "Token Authorization failed. Token either incorrect, expired, or not "
                       "provided correctly"}
        resp = await client.get("/ping", headers={"Authorization": bearer(store.key(MANAGEMENT))})
        assert resp.status == 400
        resp = await client.get("/ping", headers={"Authorization": bearer(store.key(INFERENCE))})
        assert resp.status == 200 and await resp.json() == {"status": "Healthy"}
        resp = await client.options("/")  # the API description needs no key
        assert resp.status == 200
        resp = await client.get("/nope")  # unknown paths are refused before routing
        assert resp.status == 400

    run(app_for(store, INFERENCE), body)


def test_middleware_custom_exempt(store):
    async def body(client):
        assert (await client.get("/ping")).status == 200
        assert (await client.options("/")).status == 400

    run(app_for(store, INFERENCE, exempt={("get", "/ping")}), body)


def test_middleware_disabled(tmp_path):
    assert auth.make_auth_middleware(None, INFERENCE) is None

    async def body(client):
        assert (await client.get("/ping")).status == 200

    run(app_for(None, INFERENCE), body)


def test_middleware_rejects_unknown_kind(store):
    with pytest.raises(ValueError, match="kind must be"):
        auth.make_auth_middleware(store, "metrics")


def test_token_endpoint(store):
    api, man, inf = store.key(API), store.key(MANAGEMENT), store.key(INFERENCE)

    async def body(client):
        # The management key does not open /token; the API key does.
        resp = await client.get("/token?type=management", headers={"Authorization": bearer(man)})
        assert resp.status == 400 and (await resp.json())["type"] == "InvalidKeyException"
        assert store.key(MANAGEMENT) == man
        resp = await client.get("/token?type=management", headers={"Authorization": bearer(api)})
        assert resp.status == 200 and await resp.read() == b""
        new_man = store.key(MANAGEMENT)
        assert new_man.value != man.value
        assert file_keys(store.path)["management"]["key"] == new_man.value
        # the old management key is refused, the new one works
        resp = await client.get("/ping", headers={"Authorization": bearer(man)})
        assert resp.status == 400
        resp = await client.get("/ping", headers={"Authorization": bearer(new_man)})
        assert resp.status == 200
        resp = await client.post("/token?type=inference", headers={"Authorization": bearer(api)})
        assert resp.status == 200
        assert store.key(INFERENCE).value != inf.value
        resp = await client.get("/token?type=API", headers={"Authorization": bearer(api)})
        assert resp.status == 400
        assert "type=management or type=inference" in (await resp.json())["message"]
        resp = await client.get("/token", headers={"Authorization": bearer(api)})
        assert resp.status == 400 and "no type" in (await resp.json())["message"]
        resp = await client.get("/token?type=inference")
        assert resp.status == 400 and (await resp.json())["type"] == "InvalidKeyException"

    run(app_for(store, MANAGEMENT), body)
