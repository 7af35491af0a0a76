"""Context, RequestProcessor, the metrics cache and the label helpers."""

from __future__ import annotations

import json

import pytest

from dagserve.engine.handler.context import Context, RequestProcessor
from dagserve.engine.handler.metrics import (Dimension, MetricsCache, MetricsCacheKeyError,
                                    MetricsCacheValueError, MetricTypes, timed)
from dagserve.engine.handler.util import (PredictionException, list_classes_from_module,
                                 load_label_mapping, map_class_to_label)
from dagserve.engine.messages import Param


def batch_context(n: int = 2) -> Context:
    context = Context("m", "/models/m", {"model": {}}, n, None, "1.0")
    context.request_ids = {i: f"id{i}" for i in range(n)}
    context.request_processor = [
        RequestProcessor({"X-Token": f"t{i}"}, [Param("body", "text/plain", b"")])
        for i in range(n)
    ]
    return context


def test_request_accessors():
    context = batch_context()
    assert context.get_request_id() == "id0" and context.get_request_id(1) == "id1"
    assert context.get_request_id(5) is None
    assert context.get_request_header(1, "X-Token") == "t1"
    assert context.get_request_header(1, "x-token") == "t1"  # case-insensitive fallback
    assert context.get_request_header(0, "body") == {"content-type": "text/plain"}
    assert context.get_request_header(0, "missing") is None
    assert context.get_all_request_header(0) == {"body": {"content-type": "text/plain"},
                                                 "X-Token": "t0"}


def test_response_accessors():
    context = batch_context()
    assert context.get_response_status(0) == (200, None)
    context.set_response_status(404, "Gone", idx=1)
    context.set_response_content_type(0, "text/csv")
    context.set_response_header(0, "X-A", "b")
    assert context.get_response_status(1) == (404, "Gone")
    assert context.get_response_content_type(0) == "text/csv"
    assert context.get_response_headers(0) == {"content-type": "text/csv", "X-A": "b"}
    context.set_all_response_status(503, "Busy")
    assert [context.get_response_status(i) for i in range(2)] == [(503, "Busy")] * 2


def test_context_outside_a_batch():
    context = Context("m", "/d", {}, 1, 0, "1.0")
    assert context.get_request_id() is None
    assert context.system_properties["gpu_id"] == 0
    assert context.system_properties["server_name"] == "MMS"
    assert context.model_yaml_config == {}
    context.set_response_status(500)  # no batch: ignored, like TorchServe
    with pytest.raises(RuntimeError, match="no request in progress"):
        context.get_request_header(0, "x")
    with pytest.raises(IndexError, match="out of range for a batch of 2"):
        batch_context().get_response_headers(3)


# -- metrics -------------------------------------------------------------------------------

def test_metric_kinds_units_and_dims():
    cache = MetricsCache("model")
    cache.add_time("T", 3, unit="s")
    cache.add_size("S", 1.5, unit="GB")
    cache.add_percent("P", 50)
    cache.add_counter("C", 2, dimensions=[Dimension("Level", "Custom")])
    cache.add_metric("H", 7, "items", metric_type=MetricTypes.HISTOGRAM)
    cache.add_metric("G", 7, "items", metric_type="gauge")
    got = {m["name"]: (m["value"], m["unit"], m["type"], m["dims"]["Level"])
           for m in cache.drain()}
    assert got == {"T": (3, "s", "gauge", "Model"), "S": (1.5, "GB", "gauge", "Model"),
                   "P": (50, "percent", "gauge", "Model"), "C": (2, "count", "counter", "Custom"),
                   "H": (7, "items", "histogram", "Model"), "G": (7, "items", "gauge", "Model")}
    assert cache.drain() == []


@pytest.mark.parametrize("call, message", [
    (lambda c: c.add_time("T", 1, unit="min"), "unit of time metric"),
    (lambda c: c.add_size("S", 1, unit="TB"), "unit of size metric"),
    (lambda c: c.add_counter("C", -1), "negative"),
    (lambda c: c.add_metric("X", "lots", "count"), "must be a number"),
    (lambda c: c.add_metric("X", 1, "count", metric_type="summary"), "metric type"),
])
def test_bad_metrics_are_clear_errors(call, message):
    with pytest.raises(MetricsCacheValueError, match=message):
        call(MetricsCache("m"))


def test_declared_metrics():
    cache = MetricsCache("m")
    metric = cache.add_metric_to_cache("Requests", "count", ["Route"])
    assert cache.get_metric("Requests") is metric
    metric.add_or_update(3, ["a"])
    metric.update(1, dimensions=[Dimension("Other", "z")])
    with pytest.raises(MetricsCacheValueError, match="do not match"):
        metric.add_or_update(1, ["a", "b"])
    with pytest.raises(MetricsCacheKeyError):
        cache.get_metric("Requests", MetricTypes.GAUGE)
    assert [m["dims"] for m in cache.drain()] == [
        {"Route": "a", "ModelName": "m", "Level": "Model"},
        {"Other": "z", "ModelName": "m", "Level": "Model"}]


def test_timed_records_only_when_profiling_is_on():
    class H:
        def __init__(self, config):
            self.context = Context("m", "/d", {}, 1, None, "1", model_yaml_config=config)

        @timed
        def preprocess(self, x):
            return x + 1

    off = H({})
    assert off.preprocess(1) == 2 and off.context.metrics.drain() == []
    on = H({"handler": {"profile": True}})
    assert on.preprocess(1) == 2
    assert [m["name"] for m in on.context.metrics.drain()] == ["ts_handler_preprocess"]


# -- util ----------------------------------------------------------------------------------

def test_prediction_exception():
    exc = PredictionException("bad", 400)
    assert (exc.message, exc.error_code, str(exc)) == ("bad", 400, "bad : 400")
    assert PredictionException("x").error_code == 500


def test_load_label_mapping(tmp_path):
    path = tmp_path / "index_to_name.json"
    assert load_label_mapping(path) is None
    path.write_text(json.dumps({"0": ["n01", "tench"], "1": "goldfish"}))
    assert load_label_mapping(path) == {"0": "tench", "1": "goldfish"}
    path.write_text(json.dumps({"object_type_names": ["a", "b"]}))
    assert load_label_mapping(path) == {"0": "a", "1": "b"}
    path.write_text(json.dumps({"0": 5}))
    with pytest.raises(ValueError, match="label of class '0' must be a string"):
        load_label_mapping(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        load_label_mapping(path)


def test_map_class_to_label():
    probs = [[0.7, 0.2], [0.6, 0.3]]
    assert map_class_to_label(probs) == [{"0": 0.7, "1": 0.2}, {"0": 0.6, "1": 0.3}]
    assert map_class_to_label(probs, {"0": "a", "3": "d"}, [[3, 0], [1, 0]]) == [
        {"d": 0.7, "a": 0.2}, {"1": 0.6, "a": 0.3}]
    with pytest.raises(TypeError):
        map_class_to_label("nope")


def test_list_classes_from_module():
    import dagserve.engine.handler.image_classifier as module
    from dagserve.engine.handler.base_handler import BaseHandler

    assert [c.__name__ for c in list_classes_from_module(module)] == ["ImageClassifier"]
    assert list_classes_from_module(module, BaseHandler) == [module.ImageClassifier]
    assert list_classes_from_module(module, dict) == []
