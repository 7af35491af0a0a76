"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium) against a live server with token authorization on: every node of a registered
workflow is drawn, a live figure changes after requests, a trace opens as a timeline, and
the page is saved as docs/img/dashboard.png (the README's screenshot)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

from server_utils import ECHO_HANDLER, REPO_ROOT, build_mar, build_war, start_server

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium and chromedriver are not installed "
                                       "(make test installs them with apt-get)")

SCREENSHOT = REPO_ROOT / "docs" / "img" / "dashboard.png"
FUNCTIONS = '''
import json


def _text(row):
    value = row.get("body", row.get("data"))
    return bytes(value).decode() if isinstance(value, (bytes, bytearray)) else str(value)


def pre(data, context):
    if data is None:
        return None
    return [_text(row).upper() for row in data]


def left(data, context):
    if data is None:
        return None
    return ["left:" + _text(row) for row in data]


def join(data, context):
    if data is None:
        return None
    return [json.dumps(sorted(row)) for row in data]
'''
SPEC = """models:
  detector:
    url: detector.mar
    batch-size: 4
dag:
  pre: [left, detector]
  left: [join]
  detector: [join]
"""
NODES = ["pre", "left", "detector", "join"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("dashboard")
    store = work / "store"
    build_mar(store, "detector", ECHO_HANDLER)
    build_mar(store, "echo", ECHO_HANDLER)
    build_war(store, "diamond", SPEC, FUNCTIONS)
    with start_server(work, model_store=store,
                      args=["--ncs", "--models", "echo=echo.mar",
                            "--workflows", "diamond.war"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def post(server, trace: bool = False):
    headers = {"Authorization": server.auth("inference")["Authorization"]}
    if trace:
        headers["X-Dagserve-Trace"] = "1"
    r = requests.post(f"{server.inference_url}/wfpredict/diamond", data=b"hi",
                      headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r


def live_calls(driver, node: str) -> int:
    figure = driver.find_element(By.CSS_SELECTOR, f'text.live[data-node="{node}"]')
    return int(figure.get_attribute("data-calls"))


def test_page_needs_the_key_for_its_data(server):
    assert requests.get(f"{server.management_url}/dashboard", timeout=10).status_code == 200
    data = requests.get(f"{server.management_url}/dashboard/data", timeout=10)
    assert data.status_code == 400 and data.json()["type"] == "InvalidKeyException"


def test_dashboard_draws_the_dag_and_updates_live(server, browser):
    key = server.keys()["management"]["key"]
    browser.get(f"{server.management_url}/dashboard?token={key}&refresh=500")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'svg.dag[data-workflow="diamond"]'))
    drawn = {g.get_attribute("data-node")
             for g in browser.find_elements(By.CSS_SELECTOR, "svg.dag g.node")}
    assert drawn == set(NODES)
    kinds = {g.get_attribute("data-node"): g.get_attribute("class")
             for g in browser.find_elements(By.CSS_SELECTOR, "svg.dag g.node")}
    assert "model" in kinds["detector"].split() and "function" in kinds["pre"].split()
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.dag path.edge")) == 4
    models = [row.get_attribute("data-model")
              for row in browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")]
    assert models == ["echo"]

    before = live_calls(browser, "detector")
    for _ in range(5):
        post(server)
    traced = post(server, trace=True).headers["X-Dagserve-Trace-Id"]
    wait.until(lambda d: live_calls(d, "detector") >= before + 6)
    figure = browser.find_element(By.CSS_SELECTOR, 'text.live[data-node="detector"]').text
    assert "/s" in figure and "p50" in figure and "err 0" in figure
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    assert Path(SCREENSHOT).stat().st_size > 10_000

    link = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'a[data-trace="{traced}"]'))
    link[0].click()
    wait.until(lambda d: d.find_element(By.ID, "timeline").is_displayed())
    rows = {r.get_attribute("data-node")
            for r in browser.find_elements(By.CSS_SELECTOR, "#timeline .tl-row")}
    assert rows == set(NODES)
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline .tl-bar")
    browser.find_element(By.ID, "close-timeline").click()
    wait.until(lambda d: not d.find_element(By.ID, "timeline").is_displayed())
