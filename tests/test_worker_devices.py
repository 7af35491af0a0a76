"""Worker-to-device assignment without a GPU: the server-wide round-robin over
``number_of_gpu`` GPUs, a model's ``deviceIds`` and ``deviceType: cpu`` (unit level), and
the same through a real server whose config claims two GPUs (each worker reports the
gpu_id it was given; on a machine without CUDA BaseHandler then runs on the CPU)."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import requests

from server_utils import build_mar, start_server

from dagserve.engine.workers.devices import (DeviceConfigError, ModelDevices,
                                             parse_device_config)
from dagserve.engine.workers.pool import DeviceAllocator, visible_gpu_count


def test_models_share_one_round_robin():
    shared = DeviceAllocator(3)
    a, b = ModelDevices(shared), ModelDevices(shared)
    assert [a.next(), b.next(), a.next(), a.next(), b.next()] == [0, 1, 2, 0, 1]
    assert a.gpu_count == 3


def test_number_of_gpu_and_no_gpu():
    assert visible_gpu_count(2) == 2
    assert visible_gpu_count(0) == 0
    cpu = ModelDevices(DeviceAllocator(0))
    assert cpu.gpu_count == 0 and {cpu.next() for _ in range(3)} == {None}


def test_device_ids_pin_workers_and_cpu_type_never_gets_a_gpu():
    shared = DeviceAllocator(4)
    pinned = ModelDevices(shared, None, [2, 3])
    assert [pinned.next() for _ in range(5)] == [2, 3, 2, 3, 2]
    assert pinned.gpu_count == 2 and pinned.device_ids == [2, 3]
    assert shared.next() == 0  # pinned models do not move the shared counter
    cpu = ModelDevices(shared, "cpu", [1])
    assert cpu.gpu_count == 0 and cpu.next() is None


def test_gpu_requests_without_gpus_fall_back_to_cpu(caplog):
    with caplog.at_level(logging.WARNING, logger="dagserve.workers"):
        fallback = ModelDevices(DeviceAllocator(0), "gpu", [0], "m")
    assert fallback.next() is None and "asks for GPUs" in caplog.text


def test_bad_device_config_is_refused():
    with pytest.raises(DeviceConfigError, match=r"deviceIds \[5\] are not visible"):
        ModelDevices(DeviceAllocator(4), None, [5])
    for config, message in (({"deviceType": "tpu"}, "deviceType must be cpu or gpu"),
                            ({"deviceIds": "0,1"}, "deviceIds must be a non-empty list"),
                            ({"deviceIds": [-1]}, "deviceIds must be a non-empty list"),
                            ({"deviceIds": [True]}, "deviceIds must be a non-empty list")):
        with pytest.raises(DeviceConfigError, match=message):
            parse_device_config(config)
    assert parse_device_config({"deviceType": "GPU", "deviceIds": [0, 1]}) == ("gpu", [0, 1])


GPU_ID_HANDLER = '''\
import os


def handle(data, context):
    if data is None:
        with open(os.environ["DROPIN_GPU_LOG"], "a") as log:
            log.write(f"{context.model_name} {context.system_properties['gpu_id']}\\n")
        return None
    return [str(context.system_properties["gpu_id"]) for _ in data]
'''


def test_a_server_hands_out_devices_as_configured(tmp_path):
    store = tmp_path / "model_store"
    build_mar(store, "spread", GPU_ID_HANDLER, config_yaml="minWorkers: 3\nmaxWorkers: 3\n")
    build_mar(store, "pinned", GPU_ID_HANDLER,
              config_yaml="minWorkers: 2\nmaxWorkers: 2\ndeviceIds: [1]\n")
    build_mar(store, "cpuonly", GPU_ID_HANDLER,
              config_yaml="minWorkers: 1\nmaxWorkers: 1\ndeviceType: cpu\n")
    build_mar(store, "badids", GPU_ID_HANDLER, config_yaml="deviceIds: [7]\n")
    log = tmp_path / "gpu.log"
    with start_server(tmp_path, model_store=store,
                      args=["--disable-token-auth", "--ncs", "--enable-model-api", "--models",
                            "spread.mar", "pinned.mar", "cpuonly.mar"],
                      config={"number_of_gpu": 2}, env={"DROPIN_GPU_LOG": str(log)}) as srv:
        seen = Counter(tuple(line.split()) for line in log.read_text().splitlines())
        assert seen == Counter({("spread", "0"): 2, ("spread", "1"): 1, ("pinned", "1"): 2,
                                ("cpuonly", "None"): 1})
        described = requests.get(f"{srv.management_url}/models/cpuonly", timeout=30).json()
        assert described[0]["deviceType"] == "cpu"
        assert requests.get(f"{srv.management_url}/models/pinned",
                            timeout=30).json()[0]["deviceType"] == "gpu"
        bad = requests.post(f"{srv.management_url}/models", params={"url": "badids.mar"},
                            timeout=30)
        assert bad.status_code == 400 and "deviceIds [7] are not visible" in bad.text
