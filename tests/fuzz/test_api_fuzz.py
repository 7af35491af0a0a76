"""Schema-driven fuzzing of the REST APIs: schemathesis generates requests from the OpenAPI
document each port serves (``OPTIONS /``) and sends them to a real server; no answer may be a
5xx, and every error must be TorchServe's JSON body.

``FUZZ_EXAMPLES`` sets the examples per operation (default 30: about 300 requests per port);
``make fuzz`` runs more.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server_utils import ECHO_HANDLER, build_mar, start_server  # noqa: E402

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
MODEL = "fz_echo_7"  # a name the fuzzer will not guess: scaling it to huge sizes stays unlikely


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    store = work / "store"
    build_mar(store, MODEL, ECHO_HANDLER)
    with start_server(work, model_store=store,
                      args=["--disable-token-auth", "--enable-model-api", "--ncs",
                            "--models", f"{MODEL}={MODEL}.mar"]) as srv:
        yield srv


def served_operations(base_url: str) -> list:
    resp = requests.request("OPTIONS", base_url + "/", timeout=30)
    assert resp.status_code == 200
    schema = schemathesis.openapi.from_dict(json.loads(resp.content))
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(base_url: str, operation, seen: list[tuple[str, str, int]]) -> None:
    session = requests.Session()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy())
    def one(case) -> None:
        resp = case.call(base_url=base_url, session=session, timeout=30)
        seen.append((case.method, case.formatted_path, resp.status_code))
        assert resp.status_code < 500, (case.method, case.formatted_path, case.query,
                                        resp.status_code, resp.text[:500])
        if resp.status_code >= 400 and case.method.upper() != "HEAD":
            body = resp.json()
            assert set(body) == {"code", "type", "message"} and body["code"] == resp.status_code

    one()
    session.close()


@pytest.mark.parametrize("port", ["inference", "management"])
def test_no_generated_request_gets_a_5xx(server, port):
    base_url = getattr(server, f"{port}_url")
    seen: list[tuple[str, str, int]] = []
    operations = served_operations(base_url)
    assert len(operations) >= {"inference": 9, "management": 15}[port]
    for operation in operations:
        fuzz(base_url, operation, seen)
    assert len(seen) >= 5 * len(operations)
    # the server is still whole: the model answers
    resp = requests.post(f"{server.inference_url}/predictions/{MODEL}", data=b"ok", timeout=30)
    assert resp.content == b"ok"
    report = os.environ.get("DAGSERVE_FAULT_REPORT")
    if report:
        with open(report, "a") as fh:
            fh.write(json.dumps({"test": f"test_api_fuzz.py::{port}", "requests": len(seen),
                                 "failures": 0, "unanswered": 0, "recover_s": None,
                                 "notes": f"{len(operations)} operations"}) + "\n")
