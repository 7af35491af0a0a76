"""The worker's settings: one typed structure from the frontend to the worker process."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagserve.engine.workers.process import WorkerSpec
from dagserve.engine.workers.settings import WorkerSettings


def test_round_trip_from_the_frontend_spec_to_the_worker():
    spec = WorkerSpec(model_name="m", model_dir=Path("/models/m"), handler="h.py:fn",
                      batch_size=4, decode_input=False, config_file="cfg.yaml",
                      server_version="9.9")
    settings = spec.settings_for(Path("/run/w.sock"), gpu_id=1, threads=2)
    back = WorkerSettings.from_json(settings.to_json())
    assert back == settings
    config = back.service_config()
    assert (config.model_dir, config.model_name, config.handler, config.gpu_id) == \
        (Path("/models/m"), "m", "h.py:fn", 1)
    assert (config.batch_size, config.decode_input, config.config_file) == (4, False, "cfg.yaml")


@pytest.mark.parametrize(("text", "message"), [
    ("[]", "must be a JSON object"),
    ("{", "not valid JSON"),
    ('{"socket": "s", "model_dir": "d"}', "non-empty string 'model_name'"),
    ('{"socket": "s", "model_dir": "d", "model_name": "m", "colour": 1}',
     "unknown key(s) 'colour'"),
    ('{"socket": "s", "model_dir": "d", "model_name": "m", "envelope": 1}',
     "'envelope' must be null or str"),
    ('{"socket": "s", "model_dir": "d", "model_name": "m", "batch_size": "8"}',
     "'batch_size' must be int"),
    ('{"socket": "s", "model_dir": "d", "model_name": "m", "gpu_id": true}',
     "'gpu_id' must be null or int"),
    ('{"socket": "s", "model_dir": "d", "model_name": "m", "decode_input": 1}',
     "'decode_input' must be bool"),
])
def test_bad_settings_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        WorkerSettings.from_json(text)
