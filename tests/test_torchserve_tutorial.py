"""TorchServe's getting-started tutorial, its commands unchanged, against dagserve with the
TorchServe command names (docs/torchserve-tutorial.md): ``torch-model-archiver ... --handler
image_classifier``, ``torchserve --start --ncs --model-store model_store --models
densenet161.mar``, ``curl .../predictions/densenet161 -T kitten_small.jpg``,
``torchserve --stop``. The three downloaded files are made locally by
examples/densenet_tutorial/build.py. The aliases come from ``dagserve install-aliases``,
which must never replace another program's script of the same name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from server_utils import REPO_ROOT, _child_env, free_port

from dagserve.engine.aliases import ALIASES, MARKER, install, remove

TUTORIAL = REPO_ROOT / "examples" / "densenet_tutorial"


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_install_aliases_never_replaces_a_foreign_script(tmp_path):
    foreign = tmp_path / "torchserve"
    foreign.write_text("#!/bin/sh\necho real torchserve\n")
    written, skipped = install(tmp_path)
    assert skipped == [foreign]
    assert foreign.read_text() == "#!/bin/sh\necho real torchserve\n"
    assert sorted(p.name for p in written) == ["torch-model-archiver", "torch-workflow-archiver"]
    assert all(MARKER in p.read_text() for p in written)
    again, _ = install(tmp_path)  # our own scripts are refreshed
    assert sorted(p.name for p in again) == sorted(p.name for p in written)
    assert sorted(p.name for p in remove(tmp_path)) == sorted(p.name for p in written)
    assert foreign.exists() and not (tmp_path / "torch-model-archiver").exists()


def test_getting_started_commands_run_unchanged(tmp_path):
    work = tmp_path / "tutorial"
    bin_dir = tmp_path / "bin"
    env = _child_env({"TMPDIR": str(tmp_path), "PATH": f"{bin_dir}:/usr/bin:/bin"})
    out = run([sys.executable, "-m", "dagserve.engine.cli", "install-aliases", "--bin-dir",
               str(bin_dir)], REPO_ROOT, env)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in bin_dir.iterdir()) == sorted(ALIASES)
    run([sys.executable, str(TUTORIAL / "build.py"), "--out", str(work)], REPO_ROOT, env)
    shutil.copy(TUTORIAL / "model.py", work / "model.py")
    ports = {api: free_port() for api in ("inference", "management", "metrics")}
    # TorchServe 0.12 turns token authorization on; the tutorial's curl sends no token, so
    # the deployment's ./config.properties (read without --ts-config, as TorchServe does)
    # switches it off. One worker keeps the test light on many-core machines.
    (work / "config.properties").write_text(
        "".join(f"{api}_address=http://127.0.0.1:{port}\n" for api, port in ports.items())
        + "disable_token_authorization=true\ndefault_workers_per_model=1\n")
    (work / "model_store").mkdir()

    archived = run(["torch-model-archiver", "--model-name", "densenet161", "--version", "1.0",
                    "--model-file", "./model.py", "--serialized-file",
                    "densenet161-8d451a50.pth", "--export-path", "model_store",
                    "--extra-files", "./index_to_name.json", "--handler", "image_classifier"],
                   work, env)
    assert archived.returncode == 0, archived.stderr
    started = run(["torchserve", "--start", "--ncs", "--model-store", "model_store",
                   "--models", "densenet161.mar"], work, env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "Model server started." in started.stdout
        url = f"http://127.0.0.1:{ports['inference']}/predictions/densenet161"
        if shutil.which("curl"):
            answer = run(["curl", "-s", url, "-T", "kitten_small.jpg"], work, env, 60).stdout
        else:
            answer = requests.put(url, data=(work / "kitten_small.jpg").read_bytes(),
                                  timeout=60).text
        top5 = json.loads(answer)
        labels = {v[1] for v in json.loads((work / "index_to_name.json").read_text()).values()}
        assert len(top5) == 5 and set(top5) <= labels, answer
        probs = list(top5.values())
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    finally:
        stopped = run(["torchserve", "--stop"], work, env)
    assert stopped.returncode == 0 and "Model server stopped." in stopped.stdout


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_runs_the_dagserve_command(tmp_path, name):
    install(tmp_path)
    out = run([str(tmp_path / name), "--help"], tmp_path, _child_env(None), 60)
    assert out.returncode == 0 and "usage:" in out.stdout
