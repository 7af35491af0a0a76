"""Registration URLs that try to walk around ``allowed_urls``: redirects to hosts no pattern
allows, percent-encoded ``..``, loopback and link-local addresses under a generic pattern.
Two real HTTP servers on 127.0.0.1 stand in for an allowed host and a forbidden one; each
records what it was asked, so a test can prove the forbidden one was never contacted."""

from __future__ import annotations

import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from conftest import REQUEST_TIMEOUT, assert_no_processes_left, files_under
from server_utils import ECHO_HANDLER, build_mar, start_server


class Origin:
    """A tiny HTTP server: serves ``archive`` for paths ending in .mar, answers the
    ``redirects`` map with 302s, and records every path it was asked for."""

    def __init__(self, archive: bytes, redirects: dict[str, str] | None = None):
        self.archive = archive
        self.redirects = redirects or {}
        self.paths: list[str] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                origin.paths.append(self.path)
                if self.path in origin.redirects:
                    self.send_response(302)
                    self.send_header("Location", origin.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path.endswith(".mar"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(origin.archive)))
                    self.end_headers()
                    self.wfile.write(origin.archive)
                else:
                    self.send_error(404)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("url-faults")
    store = work / "store"
    archive = build_mar(store, "echo", ECHO_HANDLER)
    for sub in ("allowed", "other"):
        (store / sub).mkdir()
        shutil.copy(archive, store / sub / "echo.mar")
    data = archive.read_bytes()
    forbidden = Origin(data)
    allowed = Origin(data)
    allowed.redirects = {
        "/allowed/out.mar.redirect": f"http://127.0.0.1:{forbidden.port}/elsewhere/echo.mar",
        "/allowed/in.mar.redirect": "/allowed/echo.mar",
        "/allowed/file.mar.redirect": f"file://{store}/allowed/echo.mar",
    }
    patterns = [
        rf"http://127\.0\.0\.1:{allowed.port}/allowed/.*",  # names the loopback address
        rf"http://localhost:{forbidden.port}/named/.*",  # names localhost
        rf"http://[^/]+:{forbidden.port}/generic/.*",  # names no host
        rf"file://{re.escape(str(store))}/allowed/.*",
    ]
    srv = start_server(work, model_store=store, config={"allowed_urls": ",".join(patterns)},
                       args=["--disable-token-auth", "--enable-model-api", "--ncs"])
    before = files_under(store)
    try:
        yield srv, store, allowed, forbidden
    finally:
        known = srv.worker_pids()
        srv.stop()
        allowed.close()
        forbidden.close()
        assert_no_processes_left(srv.pid, known)
        assert files_under(store) == before


def register(srv, url: str) -> requests.Response:
    return requests.post(srv.management_url + "/models", timeout=REQUEST_TIMEOUT,
                         params={"url": url, "model_name": "fetched", "initial_workers": 0})


def registered(srv) -> bool:
    return requests.get(srv.management_url + "/models/fetched",
                        timeout=REQUEST_TIMEOUT).status_code == 200


def unregister(srv) -> None:
    requests.delete(srv.management_url + "/models/fetched", timeout=REQUEST_TIMEOUT)


@pytest.mark.parametrize("path", ["/allowed/echo.mar", "/allowed/in.mar.redirect"])
def test_an_allowed_url_and_a_redirect_to_an_allowed_url_register(setup, path, figures):
    srv, _, allowed, _ = setup
    resp = register(srv, f"http://127.0.0.1:{allowed.port}{path}")
    figures.requests += 1
    assert resp.status_code == 200, resp.text
    assert registered(srv)
    unregister(srv)


def test_a_redirect_to_a_url_no_pattern_allows_is_not_followed(setup, figures):
    srv, _, allowed, forbidden = setup
    seen = len(forbidden.paths)
    resp = register(srv, f"http://127.0.0.1:{allowed.port}/allowed/out.mar.redirect")
    figures.requests += 1
    assert resp.status_code == 404, resp.text
    assert "redirected" in resp.json()["message"]
    assert "does not match any allowed URL" in resp.json()["message"]
    assert len(forbidden.paths) == seen  # the second host never received the download
    assert not registered(srv)


def test_a_redirect_to_a_file_url_is_refused(setup, figures):
    srv, _, allowed, _ = setup
    resp = register(srv, f"http://127.0.0.1:{allowed.port}/allowed/file.mar.redirect")
    figures.requests += 1
    assert resp.status_code == 404 and "not an http(s) URL" in resp.json()["message"]
    assert not registered(srv)


@pytest.mark.parametrize("suffix", ["%2e%2e/other/echo.mar", "%2E%2E%2Fother/echo.mar",
                                    "..%2fother/echo.mar"])
def test_a_percent_encoded_dotdot_cannot_leave_the_allowed_directory(setup, suffix, figures):
    srv, store, _, _ = setup
    resp = register(srv, f"file://{store}/allowed/{suffix}")
    figures.requests += 1
    assert resp.status_code == 404, resp.text
    assert "Relative path is not allowed" in resp.json()["message"]
    assert not registered(srv)
    assert register(srv, f"file://{store}/allowed/echo.mar").status_code == 200
    unregister(srv)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.2", "[::1]", "169.254.169.254",
                                  "0.0.0.0", "[::ffff:127.0.0.1]"])
def test_loopback_and_link_local_need_a_pattern_that_names_them(setup, host, figures):
    srv, _, _, forbidden = setup
    seen = len(forbidden.paths)
    resp = register(srv, f"http://{host}:{forbidden.port}/generic/echo.mar")
    figures.requests += 1
    assert resp.status_code == 404, resp.text
    assert "loopback or link-local" in resp.json()["message"]
    assert len(forbidden.paths) == seen
    assert not registered(srv)


def test_a_pattern_naming_localhost_allows_it(setup, figures):
    srv, _, _, forbidden = setup
    resp = register(srv, f"http://localhost:{forbidden.port}/named/echo.mar")
    figures.requests += 1
    assert resp.status_code == 200, resp.text
    assert forbidden.paths[-1] == "/named/echo.mar"
    unregister(srv)
