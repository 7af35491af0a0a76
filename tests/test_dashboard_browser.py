"""The dashboard in a real headless Chromium (Debian's chromium, driven over the DevTools
protocol: tests/cdp_browser.py) against a live server with token authorization on: every
node of a registered workflow is drawn, a live figure changes after requests, a trace opens
as a timeline, and the page is saved as docs/img/dashboard.png (the README's screenshot)."""

from __future__ import annotations

import json

import pytest
import requests

from cdp_browser import Chromium, chromium_path
from server_utils import ECHO_HANDLER, REPO_ROOT, build_mar, build_war, start_server

CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                                        "(make test installs it with apt-get)")

SCREENSHOT = REPO_ROOT / "docs" / "img" / "dashboard.png"
FUNCTIONS = '''
import json


def _text(row):
    value = row.get("body", row.get("data"))
    return bytes(value).decode() if isinstance(value, (bytes, bytearray)) else str(value)


def pre(data, context):
    if data is None:
        return None
    return [json.dumps({"items": _text(row).split()}) for row in data]


def left(data, context):
    if data is None:
        return None
    return ["left:" + _text(row) for row in data]


def each(data, context):
    if data is None:
        return None
    return [_text(row).upper() for row in data]


def join(data, context):
    if data is None:
        return None
    return [json.dumps(sorted(row)) for row in data]
'''
# every kind of node and edge the page draws: a model, functions, a condition, a foreach,
# and inputs (one from the request itself)
SPEC = """models:
  detector:
    url: detector.mar
    batch-size: 4
dag:
  pre: [left, detector]
  left: [join]
  detector: [each]
  each: [join]
nodes:
  left: {when: "length(items) > `1`"}
  each: {foreach: "items[*]"}
  join: {inputs: {raw: $request, left: left, each: each}}
"""
NODES = ["pre", "left", "detector", "each", "join"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("dashboard")
    store = work / "store"
    build_mar(store, "detector", ECHO_HANDLER)
    build_mar(store, "echo", ECHO_HANDLER)
    build_war(store, "overview", SPEC, FUNCTIONS)
    with start_server(work, model_store=store,
                      args=["--ncs", "--models", "echo=echo.mar",
                            "--workflows", "overview.war"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with Chromium(CHROMIUM) as chromium:
        yield chromium


def post(server, trace: bool = False):
    headers = {"Authorization": server.auth("inference")["Authorization"]}
    if trace:
        headers["X-Dagserve-Trace"] = "1"
    r = requests.post(f"{server.inference_url}/wfpredict/overview", data=b"two words",
                      headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r


def live_calls(browser, node: str) -> int:
    return int(browser.evaluate(
        f"document.querySelector('text.live[data-node=\"{node}\"]').dataset.calls"))


def test_page_needs_the_key_for_its_data(server):
    assert requests.get(f"{server.management_url}/dashboard", timeout=10).status_code == 200
    data = requests.get(f"{server.management_url}/dashboard/data", timeout=10)
    assert data.status_code == 400 and data.json()["type"] == "InvalidKeyException"


def test_dashboard_draws_the_dag_and_updates_live(server, browser):
    key = server.keys()["management"]["key"]
    browser.open(f"{server.management_url}/dashboard?token={key}&refresh=500")
    browser.wait_for("document.querySelector('svg.dag[data-workflow=\"overview\"]') !== null")
    nodes = browser.evaluate(
        "[...document.querySelectorAll('svg.dag g.node')].map(g => [g.dataset.node, "
        "g.getAttribute('class')])")
    kinds = {node: set(classes.split()) for node, classes in nodes}
    assert set(kinds) == {*NODES, "$request"}
    assert "model" in kinds["detector"] and "function" in kinds["pre"]
    assert "conditional" in kinds["left"] and "foreach" in kinds["each"]
    assert "request" in kinds["$request"]
    edges = browser.evaluate("[...document.querySelectorAll('svg.dag path.edge')]"
                             ".map(e => e.getAttribute('class'))")
    assert sorted(edges) == ["edge data"] * 5 + ["edge inputs"] * 3
    assert browser.evaluate(
        "[...document.querySelectorAll('#models tbody tr')].map(r => r.dataset.model)") == \
        ["echo"]

    before = live_calls(browser, "detector")
    for _ in range(5):
        post(server)
    traced = post(server, trace=True).headers["X-Dagserve-Trace-Id"]
    browser.wait_for("Number(document.querySelector('text.live[data-node=\"detector\"]')"
                     f".dataset.calls) >= {before + 6}")
    figure = browser.evaluate(
        "document.querySelector('text.live[data-node=\"detector\"]').textContent")
    assert "/s" in figure and "p50" in figure and "err 0" in figure
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.screenshot(SCREENSHOT)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert SCREENSHOT.stat().st_size > 10_000

    link = f"a[data-trace=\"{traced}\"]"
    browser.wait_for(f"document.querySelector({json.dumps(link)}) !== null")
    browser.evaluate(f"document.querySelector({json.dumps(link)}).click()")
    browser.wait_for("!document.getElementById('timeline').hidden")
    rows = browser.wait_for(
        "[...document.querySelectorAll('#timeline .tl-row')].map(r => r.dataset.node)")
    assert set(rows) == set(NODES)
    assert browser.evaluate("document.querySelectorAll('#timeline .tl-bar').length") >= 8
    browser.evaluate("document.getElementById('close-timeline').click()")
    assert browser.evaluate("document.getElementById('timeline').hidden") is True
