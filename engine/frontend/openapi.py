"""The OpenAPI description served at ``OPTIONS /`` (TorchServe's "API description")."""

from __future__ import annotations

import functools
import json

from ..models import SERVER_VERSION


def _op(summary: str, params: list[str], body: bool = False) -> dict:
    op: dict = {"summary": summary, "parameters": [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params],
        "responses": {"200": {"description": "OK"},
                      "400": {"description": "Bad request"},
                      "404": {"description": "Not found"},
                      "503": {"description": "No worker available"}}}
    if body:
        op["requestBody"] = {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}},
                                         "multipart/form-data": {"schema": {"type": "object"}}}}
    return op


def _ping() -> dict:
    op = _op("Liveness; with ready=true, readiness (503 while models load)", [])
    op["parameters"] = [{"name": "ready", "in": "query", "required": False,
                         "schema": {"type": "string"}}]
    return op


@functools.cache
def inference_openapi() -> bytes:
    paths = {
        "/": {"options": _op("Get the API description", [])},
        "/ping": {"get": _ping()},
        "/predictions/{model_name}": {m: _op("Predictions with the default version",
                                             ["model_name"], True) for m in ("post", "put")},
        "/predictions/{model_name}/{model_version}": {
            m: _op("Predictions with one version", ["model_name", "model_version"], True)
            for m in ("post", "put")},
        "/explanations/{model_name}": {"post": _op("Explanations", ["model_name"], True)},
        "/wfpredict/{workflow_name}": {m: _op("Run a workflow", ["workflow_name"], True)
                                       for m in ("post", "put")},
        "/wfpredict/{workflow_name}/{workflow_version}": {
            m: _op("Run one version of a workflow", ["workflow_name", "workflow_version"], True)
            for m in ("post", "put")},
    }
    doc = {"openapi": "3.0.1",
           "info": {"title": "dagserve inference API", "version": SERVER_VERSION,
                    "description": "TorchServe-compatible inference API"},
           "paths": paths}
    return json.dumps(doc, indent=2).encode()


def model_openapi(model_name: str, version: str) -> bytes:
    """``OPTIONS /predictions/{m}``: the prediction and explanation operations of one model
    (TorchServe's per-model API description)."""
    doc = {"openapi": "3.0.1",
           "info": {"title": f"RESTful API for: {model_name}", "version": version},
           "paths": {f"/predictions/{model_name}": {
                         "post": _op(f"Predictions entry point for {model_name}", [], True)},
                     f"/predictions/{model_name}/{version}": {
                         "post": _op(f"Predictions with version {version}", [], True)},
                     f"/explanations/{model_name}": {
                         "post": _op(f"Explanations for {model_name}", [], True)}}}
    return json.dumps(doc, indent=2).encode()
