"""The metrics API against the real server: TorchServe's Prometheus names, values that move
with traffic, the ``name[]`` filter, handler metrics."""

from __future__ import annotations

import re

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from server_utils import ECHO_HANDLER, METRICS_HANDLER, build_mar, start_server

TIMEOUT = 60
SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    work = tmp_path_factory.mktemp("metrics")
    store = work / "model_store"
    build_mar(store, "counted", METRICS_HANDLER)
    build_mar(store, "echo", ECHO_HANDLER)
    # default_workers_per_model: a registration without initial_workers gets that many
    with start_server(work, model_store=store, config={"default_workers_per_model": 1},
                      args=["--disable-token-auth", "--enable-model-api"]) as server:
        for params in ({"url": "counted.mar"},
                       {"url": "echo.mar", "model_name": "idle", "initial_workers": 0}):
            resp = requests.post(server.management_url + "/models", params=params,
                                 timeout=TIMEOUT)
            assert resp.status_code == 200, resp.text
        yield server


def scrape(srv, **params) -> tuple[str, dict[tuple[str, frozenset], float]]:
    resp = requests.get(srv.metrics_url + "/metrics", params=params, timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in resp.text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return resp.text, samples


def value(samples, name: str, **labels) -> float:
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{name} {labels}: {found}"
    return found[0]


def model_labels(name: str) -> dict[str, str]:
    return {"model_name": name, "model_version": "1.0"}


def test_exposition_is_valid_prometheus_text_with_torchserve_names(srv):
    text, _ = scrape(srv)
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families  # parses
    for name in ("ts_inference_latency_microseconds", "ts_queue_latency_microseconds",
                 "Requests2XX", "Requests4XX", "Requests5XX"):
        assert f"# TYPE {name} counter\n" in text
    assert "# TYPE ts_inference_requests_total counter\n" in text
    assert "_total_total" not in text and "microseconds_total" not in text


def test_values_follow_predictions(srv):
    _, before = scrape(srv)
    assert value(before, "ts_inference_requests_total", **model_labels("counted")) == 0
    ok_before = value(before, "Requests2XX", Level="Host")
    four_before = value(before, "Requests4XX", Level="Host")
    five_before = value(before, "Requests5XX", Level="Host")
    latency_before = value(before, "ts_inference_latency_microseconds",
                           **model_labels("counted"))

    for i in range(3):
        resp = requests.post(srv.inference_url + "/predictions/counted", data=b"x" * (i + 1),
                             timeout=TIMEOUT)
        assert resp.status_code == 200
    assert requests.post(srv.inference_url + "/predictions/unknown", data=b"x",
                         timeout=TIMEOUT).status_code == 404
    assert requests.post(srv.inference_url + "/predictions/idle", data=b"x",
                         timeout=TIMEOUT).status_code == 503

    _, after = scrape(srv)
    labels = model_labels("counted")
    assert value(after, "ts_inference_requests_total", **labels) == 3
    assert value(after, "ts_inference_latency_microseconds", **labels) > latency_before
    assert value(after, "ts_queue_latency_microseconds", **labels) >= 0
    assert value(after, "Requests2XX", Level="Host") >= ok_before + 3
    assert value(after, "Requests4XX", Level="Host") == four_before + 1
    assert value(after, "Requests5XX", Level="Host") == five_before + 1
    # the handler's own metrics, summed (counter) and last value (gauge)
    assert value(after, "EchoRequests", ModelName="counted", Level="Model") == 3
    assert value(after, "EchoBatchSize", ModelName="counted", Level="Model") == 1
    assert value(after, "HandlerTime", ModelName="counted", Level="Model") >= 0
    assert value(after, "dagserve_model_workers", status="READY", **labels) == 1
    assert value(after, "dagserve_model_workers", status="READY", **model_labels("idle")) == 0
    assert value(after, "dagserve_queue_pending", **labels) == 0


def test_name_filter(srv):
    text, samples = scrape(srv, **{"name[]": ["ts_inference_requests_total",
                                              "Requests2XX"]})
    assert {name for name, _ in samples} == {"ts_inference_requests_total", "Requests2XX"}
    assert "# HELP ts_queue_latency_microseconds" not in text


def test_unregistered_model_leaves_the_export(srv):
    resp = requests.delete(srv.management_url + "/models/idle", timeout=TIMEOUT)
    assert resp.status_code == 200
    _, samples = scrape(srv)
    assert not [k for k in samples if ("model_name", "idle") in k[1]]
    assert value(samples, "ts_inference_requests_total", **model_labels("counted")) >= 3


def test_only_get_metrics_is_served(srv):
    assert requests.get(srv.metrics_url + "/other", timeout=TIMEOUT).status_code == 404
    assert requests.post(srv.metrics_url + "/metrics", timeout=TIMEOUT).status_code == 405
