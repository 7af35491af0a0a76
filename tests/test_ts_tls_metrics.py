"""TLS and the metrics keys against real servers: ``https://`` addresses served with
``certificate_file``/``private_key_file`` on all three ports (never plain HTTP), a keystore
alone refused at start, the start-up warning naming keys read but unsupported, TorchServe's
system metrics in /metrics chosen by ``metrics_config``, ``enable_metrics_api=false`` and a
``model_snapshot`` in config.properties restored at start."""

from __future__ import annotations

import json
from datetime import datetime, timezone
import shutil
import subprocess
import sys

import pytest
import requests

from server_utils import (ECHO_HANDLER, _child_env, build_mar, free_port, start_server,
                          wait_until)

TIMEOUT = 30
METRICS_YAML = """\
ts_metrics:
  gauge:
    - name: CPUUtilization
      unit: Percent
      dimensions: [Level, Hostname]
    - name: MemoryUsed
      unit: Megabytes
      dimensions: [Level, Hostname]
model_metrics:
  gauge:
    - name: HandlerTime
      unit: ms
      dimensions: [ModelName, Level]
"""


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate (the Makefile installs it)")
    work = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    return work / "cert.pem", work / "key.pem"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, certificate):
    work = tmp_path_factory.mktemp("tls")
    (work / "metrics.yaml").write_text(METRICS_YAML)
    ports = {api: free_port() for api in ("inference", "management", "metrics")}
    config = {f"{api}_address": f"https://127.0.0.1:{port}" for api, port in ports.items()}
    config.update(certificate_file=certificate[0], private_key_file=certificate[1],
                  metrics_config=work / "metrics.yaml", keystore_type="PKCS12",
                  number_of_netty_threads=4)
    with start_server(work, args=["--disable-token-auth", "--ncs"], config=config,
                      ports=ports) as srv:
        yield srv, ports, certificate[0]


def test_all_three_ports_speak_tls_only(tls_server):
    srv, ports, cert = tls_server
    for api, path in (("inference", "/ping"), ("management", "/models"),
                      ("metrics", "/metrics")):
        answer = requests.get(f"https://127.0.0.1:{ports[api]}{path}", verify=str(cert),
                              timeout=TIMEOUT)
        assert answer.status_code == 200, (api, answer.text)
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{ports[api]}{path}", timeout=TIMEOUT)


def test_start_up_warning_names_unsupported_keys(tls_server):
    srv, _, _ = tls_server
    out = srv.output()
    assert "keys read but not supported by dagserve" in out
    assert "keystore_type: Java keystore" in out and "number_of_netty_threads" in out


def test_system_metrics_chosen_by_metrics_config(tls_server):
    srv, ports, cert = tls_server

    def scrape() -> str:
        return requests.get(f"https://127.0.0.1:{ports['metrics']}/metrics", verify=str(cert),
                            timeout=TIMEOUT).text

    # CPU utilization needs a second reading of /proc/stat, taken a second after the start
    assert wait_until(lambda: "CPUUtilization{" in scrape(), 15, 0.2)
    text = scrape()
    assert "# TYPE MemoryUsed gauge" in text
    assert 'MemoryUsed{Level="Host",Hostname="' in text
    assert "CPUUtilization{" in text
    assert "DiskUsage" not in text and "MemoryAvailable" not in text  # not in metrics.yaml


def test_https_without_certificate_refuses_to_start(tmp_path):
    config = tmp_path / "config.properties"
    config.write_text(f"inference_address=https://127.0.0.1:{free_port()}\n"
                      "keystore=keystore.p12\nkeystore_pass=changeit\n")
    out = subprocess.run([sys.executable, "-m", "dagserve.engine.cli", "--foreground",
                          "--ncs", "--ts-config", str(config)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60,
                         env=_child_env({"TMPDIR": str(tmp_path)}))
    assert out.returncode == 1
    assert "inference_address use https:// but certificate_file and private_key_file" in \
        out.stderr


def test_metrics_api_off_snapshot_token_expiry_and_log_locations(tmp_path):
    store = tmp_path / "model_store"
    build_mar(store, "echo", ECHO_HANDLER)
    snapshot = {"name": "x", "modelCount": 1, "created": 0, "models": {"echo": {"1.0": {
        "defaultVersion": True, "marName": "echo.mar", "minWorkers": 1, "maxWorkers": 2,
        "batchSize": 2, "maxBatchDelay": 30, "responseTimeout": 40}}}}
    with start_server(tmp_path, model_store=store, args=["--ncs"],
                      config={"enable_metrics_api": False, "token_expiration_min": 2,
                              "model_snapshot": json.dumps(snapshot)},
                      env={"LOG_LOCATION": "mylogs", "METRICS_LOCATION": "mymetrics"}) as srv:
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"{srv.metrics_url}/metrics", timeout=TIMEOUT)
        echo = requests.get(f"{srv.management_url}/models/echo", headers=srv.auth(),
                            timeout=TIMEOUT).json()[0]
        assert (echo["minWorkers"], echo["maxWorkers"], echo["batchSize"],
                echo["maxBatchDelay"], echo["responseTimeout"]) == (1, 2, 2, 30, 40)
        assert requests.post(f"{srv.inference_url}/predictions/echo", data=b"hi",
                             headers=srv.auth("inference"), timeout=TIMEOUT).content == b"hi"
        expires = datetime.fromisoformat(
            srv.keys()["inference"]["expiration time"].replace("Z", "+00:00"))
        left = (expires - datetime.now(timezone.utc)).total_seconds()
        assert 60 < left <= 120  # token_expiration_min=2, not the default 60 minutes
        assert (tmp_path / "mylogs" / "ts_log.log").is_file()
        assert not (tmp_path / "logs").exists()
        assert (tmp_path / "mymetrics").is_dir()
