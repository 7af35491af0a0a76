"""Check dagserve on a CUDA device: a model and a 2-node workflow whose workers are pinned
to GPU 0 (model-config ``deviceIds: [0]``) answer as the same ones pinned to the CPU
(``deviceType: cpu``) do, within tolerance, and say they ran where they were put.

    python scripts/gpu_check.py                       # on a CUDA machine: expects cuda:0
    python scripts/gpu_check.py --expect-device cpu   # anywhere: the same run, all on CPU

It builds everything locally (two small seeded models, their archives, two workflow
archives), starts a real server on free loopback ports, sends the same inputs to both
placements, compares them with each other and with the models run in this process, stops
the server and exits 0 when every check holds (1 otherwise, 2 when CUDA is expected but
missing). The tests run it with ``--expect-device cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
WIDTH, CLASSES, ROWS = 16, 4, 4
TOLERANCE = 1e-4

FIRST_PY = f"""from torch import nn


class First(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear({WIDTH}, {WIDTH})

    def forward(self, x):
        return self.fc(x).tanh()
"""
SECOND_PY = f"""from torch import nn


class Second(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear({WIDTH}, {CLASSES})

    def forward(self, x):
        return self.fc(x)
"""
HANDLER_PY = '''import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class DeviceReporting(BaseHandler):
    """Takes {"values": [...]} (from a client or the node before) and answers the model's
    output with the devices it went through."""

    def preprocess(self, data):
        rows, self.trails = [], []
        for row in data:
            value = row.get("data", row.get("body"))
            if isinstance(value, (bytes, bytearray, str)):
                value = json.loads(value)
            self.trails.append(value.get("devices", []))
            rows.append(value["values"])
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def postprocess(self, out):
        return [{"devices": trail + [str(out.device)], "values": row}
                for trail, row in zip(self.trails, out.tolist())]
'''
SPEC = """models:
  min-workers: 1
  max-workers: 1
  first:
    url: first_{p}.mar
  second:
    url: second_{p}.mar
dag:
  first: [second]
"""
PLACEMENTS = {"gpu": "deviceIds: [0]\n", "cpu": "deviceType: cpu\n"}


def build_models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    namespace: dict = {}
    exec(FIRST_PY + SECOND_PY.replace("from torch import nn\n", ""), namespace)
    torch.manual_seed(seed)
    return namespace["First"]().eval(), namespace["Second"]().eval()


def build_archives(work: Path, first: nn.Module, second: nn.Module) -> Path:
    """Sources, the four .mar files (two models x two placements) and the two .war files."""
    src, store = work / "src", work / "store"
    src.mkdir(parents=True, exist_ok=True)
    store.mkdir(exist_ok=True)
    (src / "first.py").write_text(FIRST_PY)
    (src / "second.py").write_text(SECOND_PY)
    (src / "handler.py").write_text(HANDLER_PY)
    torch.save(first.state_dict(), src / "first.pt")
    torch.save(second.state_dict(), src / "second.pt")
    for placement, config in PLACEMENTS.items():
        (src / f"{placement}.yaml").write_text(config)
        for name in ("first", "second"):
            _run([sys.executable, "-m", "dagserve.archiver.model_cli", "--model-name",
                  f"{name}_{placement}", "-v", "1.0", "--model-file", str(src / f"{name}.py"),
                  "--serialized-file", str(src / f"{name}.pt"), "--handler",
                  str(src / "handler.py"), "--config-file", str(src / f"{placement}.yaml"),
                  "--export-path", str(store), "-f"])
        spec = src / f"wf_{placement}.yaml"
        spec.write_text(SPEC.format(p=placement))
        _run([sys.executable, "-m", "dagserve.archiver.workflow_cli", "--workflow-name",
              f"wf_{placement}", "--spec-file", str(spec), "--handler",
              str(src / "handler.py"), "--export-path", str(store), "-f"])
    return store


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {done.stderr.strip()}")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, store: Path, timeout: float = 180) -> tuple[subprocess.Popen, int]:
    ports = [_free_port() for _ in range(3)]
    config = work / "config.properties"
    config.write_text("".join(f"{api}_address=http://127.0.0.1:{port}\n" for api, port in
                              zip(("inference", "management", "metrics"), ports)))
    out = open(work / "server.out", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.engine.cli", "--foreground", "--ncs",
         "--disable-token-auth", "--ts-config", str(config), "--model-store", str(store),
         "--models", "first_gpu.mar", "first_cpu.mar", "--workflows", "wf_gpu.war",
         "wf_cpu.war"], cwd=work, stdout=out, stderr=subprocess.STDOUT, env=_env())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b"Model server started." in (work / "server.out").read_bytes():
            return proc, ports[0]
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start:\n" + (work / "server.out").read_text()[-3000:])


def post(port: int, path: str, payload: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST",
                                     data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


def compare(label: str, got: dict, expected_devices: list[str],
            expected_values: list[float]) -> list[str]:
    """Problems with one answer: where it ran and what it said."""
    problems = []
    if got.get("devices") != expected_devices:
        problems.append(f"{label}: ran on {got.get('devices')}, expected {expected_devices}")
    values = torch.tensor(got.get("values", []), dtype=torch.float32)
    want = torch.tensor(expected_values, dtype=torch.float32)
    if values.shape != want.shape:
        problems.append(f"{label}: {tuple(values.shape)} values, expected {tuple(want.shape)}")
    elif not torch.allclose(values, want, atol=TOLERANCE, rtol=TOLERANCE):
        worst = (values - want).abs().max().item()
        problems.append(f"{label}: differs by up to {worst:.2e} (tolerance {TOLERANCE})")
    return problems


def check(port: int, first: nn.Module, second: nn.Module, device: str) -> list[str]:
    torch.manual_seed(1)
    inputs = torch.randn(ROWS, WIDTH)
    with torch.inference_mode():
        hidden = first(inputs)
        final = second(hidden)
    problems = []
    for i, row in enumerate(inputs.tolist()):
        for placement, where in (("gpu", device), ("cpu", "cpu")):
            model = post(port, f"/predictions/first_{placement}", {"values": row})
            problems += compare(f"model first_{placement} row {i}", model, [where],
                                hidden[i].tolist())
            flow = post(port, f"/wfpredict/wf_{placement}", {"values": row})
            problems += compare(f"workflow wf_{placement} row {i}", flow, [where, where],
                                final[i].tolist())
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-device", default="cuda:0",
                        help="where the GPU-pinned workers must run (cuda:0, or cpu on a "
                             "machine without CUDA)")
    parser.add_argument("--workdir", help="keep the files here (default: a temporary dir)")
    args = parser.parse_args(argv)
    if args.expect_device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --expect-device cpu to check "
              "everything else", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    first, second = build_models()
    store = build_archives(work, first, second)
    proc, port = start_server(work, store)
    try:
        problems = check(port, first, second, args.expect_device)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        return 1
    print(f"gpu_check: all checks passed ({ROWS} inputs; model and 2-node workflow on "
          f"{args.expect_device} equal to CPU within {TOLERANCE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
