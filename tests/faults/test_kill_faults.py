"""Processes killed under load, a server killed and started again, models registered and
unregistered while another serves: every request is answered, the server recovers on its
own, the killed server's work directory is cleaned at the next start, no process is left."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from conftest import (REQUEST_TIMEOUT, assert_no_processes_left, count, post_many, recover)
from server_utils import ECHO_HANDLER, build_mar, pid_alive, start_server, wait_until

LOAD = 200  # requests per load phase


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = tmp_path_factory.mktemp("kill-store")
    build_mar(store, "echo", ECHO_HANDLER)
    build_mar(store, "churn", ECHO_HANDLER)
    return store


def ready_pids(srv, model: str) -> list[int]:
    resp = requests.get(f"{srv.management_url}/models/{model}", timeout=REQUEST_TIMEOUT)
    if resp.status_code != 200:
        return []
    return [w["pid"] for w in resp.json()[0]["workers"] if w["status"] == "READY"]


def test_workers_killed_under_load_every_request_is_answered(tmp_path, store, figures):
    srv = start_server(tmp_path, model_store=store,
                       args=["--disable-token-auth", "--enable-model-api", "--ncs"])
    try:
        resp = requests.post(srv.management_url + "/models", timeout=120,
                             params={"url": "echo.mar", "initial_workers": 2,
                                     "synchronous": "true"})
        assert resp.status_code == 200, resp.text
        victims = ready_pids(srv, "echo")
        results: list = []
        load = threading.Thread(target=post_many, args=(
            srv.inference_url + "/predictions/echo", [b"x"] * LOAD),
            kwargs={"threads": 4, "answered": results})
        load.start()
        assert wait_until(lambda: len(results) >= LOAD // 4, 60)
        for pid in victims:  # both workers, while requests are in flight
            os.kill(pid, signal.SIGKILL)
        figures.recover_s = recover(
            lambda: len([p for p in ready_pids(srv, "echo") if p not in victims]) == 2)
        load.join(REQUEST_TIMEOUT * 4)
        count(results, figures)
        assert len(results) == LOAD and figures.unanswered == 0
        assert set(results) <= {200, 500, 503}  # died with its worker, or no worker yet
        after = post_many(srv.inference_url + "/predictions/echo", [b"y"] * 20)
        assert after == [200] * 20
    finally:
        known = srv.worker_pids()
        srv.stop()
    assert_no_processes_left(srv.pid, known)


def work_dirs(tmp_path) -> list:
    return [p for p in (tmp_path / "tmp").glob("dagserve-*") if p.is_dir()]


def test_a_server_killed_and_started_again_restores_and_cleans_up(tmp_path, store, figures):
    first = start_server(tmp_path, model_store=store,
                         args=["--disable-token-auth", "--enable-model-api"])
    resp = requests.post(first.management_url + "/models", timeout=120,
                         params={"url": "echo.mar", "initial_workers": 1,
                                 "synchronous": "true"})
    assert resp.status_code == 200, resp.text
    workers = first.worker_pids()
    stale = work_dirs(tmp_path)
    assert len(stale) == 1
    os.kill(first.pid, signal.SIGKILL)  # no clean-up of any kind
    first.proc.wait()
    # its workers notice the closed socket and exit on their own
    assert wait_until(lambda: not any(pid_alive(p) for p in workers), 15.0)
    assert stale[0].exists()
    started = time.monotonic()
    second = start_server(tmp_path, model_store=store, ports=first.ports,
                          args=["--disable-token-auth", "--enable-model-api"])
    try:
        assert not stale[0].exists()  # regression (issue 17, 6): it stayed forever
        recover(lambda: ready_pids(second, "echo") != [])
        figures.recover_s = round(time.monotonic() - started, 2)  # start, restore, serve
        figures.notes = "time from the new start to its restored model serving"
        statuses = post_many(second.inference_url + "/predictions/echo", [b"z"] * 20)
        count(statuses, figures)
        assert statuses == [200] * 20
        assert len(work_dirs(tmp_path)) == 1
    finally:
        known = second.worker_pids()
        second.stop()
    assert_no_processes_left(second.pid, known)
    assert work_dirs(tmp_path) == []


def test_register_unregister_churn_under_load(tmp_path, store, figures):
    srv = start_server(tmp_path, model_store=store,
                       args=["--disable-token-auth", "--enable-model-api", "--ncs"])
    try:
        resp = requests.post(srv.management_url + "/models", timeout=120,
                             params={"url": "echo.mar", "initial_workers": 1,
                                     "synchronous": "true"})
        assert resp.status_code == 200, resp.text
        baseline = set(srv.worker_pids())  # echo's worker (and the fork server, if any)
        churn: list[int] = []
        stop = threading.Event()

        def churner() -> None:
            while not stop.is_set() and len(churn) < 20:
                churn.append(requests.post(
                    srv.management_url + "/models", timeout=120,
                    params={"url": "churn.mar", "initial_workers": 1,
                            "synchronous": "true"}).status_code)
                churn.append(requests.delete(srv.management_url + "/models/churn",
                                             timeout=REQUEST_TIMEOUT).status_code)

        thread = threading.Thread(target=churner)
        thread.start()
        statuses: list = []
        while thread.is_alive() and len(statuses) < 20 * LOAD:  # load for as long as it churns
            statuses += post_many(srv.inference_url + "/predictions/echo", [b"c"] * 50,
                                  threads=4)
        stop.set()
        thread.join(120)
        count(statuses, figures)
        figures.notes = f"{len(churn)} register/unregister calls during the load"
        assert len(churn) == 20
        assert set(statuses) == {200}
        assert set(churn) == {200}
        assert ready_pids(srv, "churn") == []
        assert [p.name for p in srv.unpacked_models()] == \
            [p.name for p in srv.unpacked_models() if p.name.startswith("echo")]
        assert set(srv.worker_pids()) == baseline  # no worker of churn's left
    finally:
        known = srv.worker_pids()
        srv.stop()
    assert_no_processes_left(srv.pid, known)
