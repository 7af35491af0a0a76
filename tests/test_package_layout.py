"""The install is one ``dagserve`` package, a model's own files can never shadow it, and
the runtime owns the server's life: a shutdown during an async registration leaves a
consistent last snapshot that nothing writes after."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

from server_utils import ECHO_HANDLER, REPO_ROOT, build_mar, start_server, wait_until

SOURCE_PACKAGES = ("dagserve", "engine", "archiver", "workflows")
MAX_MODULE_LINES = 420


def test_the_wheel_holds_only_the_dagserve_package(tmp_path):
    """``python -m build`` (without isolation: nothing is downloaded) gives a wheel whose
    only top-level names are ``dagserve/`` and its metadata."""
    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside its source
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    for top in SOURCE_PACKAGES:
        shutil.copytree(REPO_ROOT / top, src / top,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                           "--outdir", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels = list((tmp_path / "dist").glob("dagserve-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dagserve"}
    for needed in ("dagserve/__init__.py", "dagserve/handler.py",
                   "dagserve/engine/workers/main.py", "dagserve/archiver/unpack.py",
                   "dagserve/workflows/schema.json",
                   "dagserve/engine/frontend/dashboard/index.html",
                   "dagserve/engine/frontend/dashboard/dashboard.js",
                   "dagserve/engine/frontend/dashboard/dashboard.css"):
        assert needed in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheels[0]).read(entry_points).decode()
    assert "dagserve = dagserve.engine.cli:main" in text
    assert "workflow-archiver = dagserve.archiver.workflow_cli:main" in text


def test_no_source_module_is_over_the_size_limit():
    too_long = {}
    for top in SOURCE_PACKAGES:
        for path in (REPO_ROOT / top).rglob("*.py"):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_MODULE_LINES:
                too_long[str(path.relative_to(REPO_ROOT))] = lines
    assert too_long == {}


def test_handler_sdk_is_public_and_lazy():
    code = ("import sys; import dagserve.handler as h; assert 'torch' not in sys.modules; "
            "from dagserve.handler import BaseHandler, Context, PredictionException; "
            "print(BaseHandler.__module__, Context.__module__, PredictionException.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.split() == ["dagserve.engine.handler.base_handler",
                           "dagserve.engine.handler.context", "PredictionException"]


SHADOW = 'raise ImportError("this model file shadowed a dagserve module")\n'


def test_a_model_shipping_engine_workflows_and_dagserve_modules_still_serves(tmp_path):
    store = tmp_path / "model_store"
    build_mar(store, "shadow", ECHO_HANDLER,
              extra_files={"engine.py": SHADOW, "workflows.py": SHADOW, "dagserve.py": SHADOW,
                           "archiver.py": SHADOW})
    with start_server(tmp_path, model_store=store,
                      args=["--disable-token-auth", "--models", "shadow=shadow.mar"]) as srv:
        resp = requests.post(f"{srv.inference_url}/predictions/shadow", data=b"still here",
                             timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.content == b"still here"


SLOW_LOAD_HANDLER = '''
import time


def handle(data, context):
    if data is None:
        time.sleep(30)  # loading: the server is stopped meanwhile
        return None
    return [row.get("body") or row.get("data") for row in data]
'''


def _snapshots(workdir: Path) -> list[Path]:
    return sorted((workdir / "logs" / "config").glob("*.cfg"))


def test_stop_during_an_async_registration_writes_the_last_snapshot_last(tmp_path):
    store = tmp_path / "model_store"
    build_mar(store, "echo", ECHO_HANDLER)
    build_mar(store, "slow", SLOW_LOAD_HANDLER)
    srv = start_server(tmp_path, model_store=store,
                       args=["--disable-token-auth", "--enable-model-api",
                             "--models", "echo=echo.mar"])
    try:
        resp = requests.post(f"{srv.management_url}/models",
                             params={"url": "slow.mar", "initial_workers": 1,
                                     "synchronous": "false"}, timeout=30)
        assert resp.status_code == 202, resp.text
        def loading() -> bool:
            found = requests.get(f"{srv.management_url}/models/slow", timeout=10)
            return found.status_code == 200 and any(
                w["pid"] > 0 for w in found.json()[0]["workers"])

        assert wait_until(loading, timeout=30), "the slow worker never started"
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0
        assert time.monotonic() - started < 25, "shutdown waited for the registration"
    finally:
        srv.kill()
    files = _snapshots(tmp_path)
    assert files[-1].name.endswith("-shutdown.cfg"), [f.name for f in files]
    time.sleep(1.0)
    assert _snapshots(tmp_path) == files  # nothing wrote after the shutdown snapshot
    text = files[-1].read_text()
    models_line = next(line for line in text.splitlines() if line.startswith("model_snapshot="))
    assert models_line  # a complete properties file
    from dagserve.engine.properties import parse_properties

    snapshot = json.loads(parse_properties(text)["model_snapshot"])
    assert "echo" in snapshot["models"]
    assert snapshot["modelCount"] == sum(len(v) for v in snapshot["models"].values())
    assert wait_until(lambda: not _processes_mentioning(str(tmp_path)), timeout=10)


def _processes_mentioning(text: str) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and any(text in part for part in _cmdline(int(p.name)))]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


@pytest.mark.parametrize("module", ["dagserve", "dagserve.engine.cli"])
def test_python_m_entry_points(module):
    out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("dagserve Version is ")
