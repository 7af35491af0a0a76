"""Oversize, malformed and slow requests on every port: each gets TorchServe's JSON error
body (never aiohttp's plain text), a slow client is cut off (slowloris), and the server goes
on serving everyone else."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from conftest import REQUEST_TIMEOUT, assert_no_processes_left
from server_utils import ECHO_HANDLER, build_mar, start_server

HEADER_TIMEOUT = 1  # this server's request_header_timeout and request_body_timeout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("request-faults")
    store = work / "store"
    build_mar(store, "echo", ECHO_HANDLER)
    srv = start_server(work, model_store=store,
                       config={"request_header_timeout": HEADER_TIMEOUT,
                               "request_body_timeout": HEADER_TIMEOUT,
                               "max_request_size": 10_000},
                       args=["--disable-token-auth", "--enable-model-api", "--ncs",
                             "--models", "echo=echo.mar"])
    try:
        yield srv
    finally:
        known = srv.worker_pids()
        srv.stop()
        assert_no_processes_left(srv.pid, known)


def raw(port: int, data: bytes, *, timeout: float = REQUEST_TIMEOUT) -> bytes:
    """Send ``data`` on a new connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def json_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), answer[:500]
    return status, json.loads(body)


def ports(server) -> list[int]:
    return [server.ports[api] for api in ("inference", "management", "metrics")]


def assert_still_serves(server) -> None:
    resp = requests.post(server.inference_url + "/predictions/echo", data=b"alive",
                         timeout=REQUEST_TIMEOUT)
    assert resp.content == b"alive"


@pytest.mark.parametrize("kind", ["header", "url", "headers"])
def test_oversize_heads_get_the_json_error_body_on_every_port(server, kind, figures):
    """Regression (issue 17, 6): aiohttp answered these with a plain-text 400."""
    if kind == "header":
        head = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    elif kind == "url":
        head = b"GET /ping?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    else:
        head = b"GET /ping HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) \
            + b"\r\n"
    for port in ports(server):
        status, body = json_error(raw(port, head))
        figures.requests += 1
        assert 400 <= status < 500 and body["code"] == status
        assert set(body) == {"code", "type", "message"}
    assert_still_serves(server)


@pytest.mark.parametrize("head", [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                                  b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: nope\r\n\r\n"])
def test_malformed_requests_get_a_json_400(server, head, figures):
    for port in ports(server):
        status, body = json_error(raw(port, head))
        figures.requests += 1
        assert status == 400 and body["type"] == "BadRequestException"
    assert_still_serves(server)


def test_a_body_over_max_request_size_is_a_json_413(server, figures):
    resp = requests.post(server.inference_url + "/predictions/echo", data=b"x" * 20_000,
                         timeout=REQUEST_TIMEOUT)
    figures.requests += 1
    assert resp.status_code == 413 and resp.json()["code"] == 413
    assert_still_serves(server)


def test_slow_headers_are_cut_off_with_a_408(server, figures):
    """Regression (issue 17, 6): a client sending its headers slowly held the connection
    forever. The socket timeout only bounds the test; the server closes first."""
    for port in ports(server):
        with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # ... and never the end
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        figures.requests += 1
        status, body = json_error(answer)
        assert status == 408 and "did not arrive" in body["message"]
    assert_still_serves(server)


def test_an_idle_connection_that_never_sends_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.ports["inference"]),
                                  timeout=REQUEST_TIMEOUT) as sock:
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_slow_body_is_cut_off(server, figures):
    with socket.create_connection(("127.0.0.1", server.ports["inference"]),
                                  timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                     b"\r\n" + b"x" * 10)  # 990 bytes never come
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    figures.requests += 1
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    assert_still_serves(server)


def test_keep_alive_requests_in_one_piece_are_not_cut(server):
    """The header deadline starts with a request's first byte: a connection reused after a
    pause longer than the deadline still works."""
    import time

    with requests.Session() as session:
        for pause in (0, HEADER_TIMEOUT + 0.5):
            time.sleep(pause)
            resp = session.post(server.inference_url + "/predictions/echo", data=b"again",
                                timeout=REQUEST_TIMEOUT)
            assert resp.content == b"again"
        assert len(session.adapters["http://"].poolmanager.pools) == 1
