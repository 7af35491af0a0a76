"""TorchServe 0.12.0, the peer the targets are measured against, in its own virtualenv.

``benchmarks/.venv-torchserve`` is made with ``python3 -m venv``; torch goes in FIRST, pinned
to the exact build of dagserve's own venv (``2.13.0+cpu``: a local version PyPI does not
have, so pip can only take the local CPU wheel and never fetches the CUDA build), then
TorchServe and its archivers under a constraint that keeps that torch. torchvision (which
TorchServe's built-in ``image_classifier`` imports) is tried last, once (a wheel that installs but does not import, e.g. one built for another
torch, is removed again and the reason remembered in the venv); without a working torchvision the CNN scenario is reported n/a for TorchServe, with the import error.
Java 17 must be on PATH (TorchServe's frontend).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["PeerError", "TORCHSERVE_VERSION", "TorchServeInstall", "ensure_torchserve",
           "torchserve_env"]

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = HERE / ".venv-torchserve"
TORCHSERVE_VERSION = "0.12.0"
# Imported by TorchServe's Python worker but not declared by the torchserve package.
_TS_UNDECLARED = ("pyyaml",)
# What TorchServe's worker imports at start; prints the version when all of it imports.
_TS_PROBE = ("import ts, ts.utils.util, ts.service, ts.model_loader, ts.async_service; "
             "print(ts.__version__)")


class PeerError(RuntimeError):
    """TorchServe could not be installed or cannot run here."""


@dataclass(frozen=True)
class TorchServeInstall:
    venv: Path
    version: str
    torch_version: str
    torchvision_error: str | None  # None: torchvision imports
    java: str


def _run(cmd: list[str], what: str, log) -> None:
    log(f"  $ {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise PeerError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _probe(venv: Path, code: str) -> str | None:
    """What ``code`` prints in the venv, or None when it fails."""
    return _probe_error(venv, code)[0]


def _probe_error(venv: Path, code: str) -> tuple[str | None, str | None]:
    """``(stdout, None)`` when ``code`` runs in the venv, else ``(None, last error line)``."""
    python = _venv_python(venv)
    if not python.is_file():
        return None, f"{python} does not exist"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if proc.returncode == 0:
        return proc.stdout.strip(), None
    lines = proc.stderr.strip().splitlines()
    return None, (lines[-1] if lines else f"exit {proc.returncode}")


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise PeerError("TorchServe needs Java 11+ on PATH (apt-get install openjdk-17-jre-headless)")
    proc = subprocess.run([java, "-version"], capture_output=True, text=True)
    return (proc.stderr or proc.stdout).strip().splitlines()[0]


def ensure_torchserve(venv: Path = DEFAULT_VENV, log=print) -> TorchServeInstall:
    """Install (once) and describe TorchServe's venv."""
    java = _java()
    torch_pin = metadata.version("torch")  # this venv's build, e.g. 2.13.0+cpu
    ts_version = _probe(venv, _TS_PROBE)
    if ts_version != TORCHSERVE_VERSION:
        log(f"installing TorchServe {TORCHSERVE_VERSION} into {venv} (once; a few minutes)")
        if not _venv_python(venv).is_file():
            base = shutil.which("python3") or sys.executable
            _run([base, "-m", "venv", str(venv)], "creating the TorchServe venv", log)
        pip = [str(_venv_python(venv)), "-m", "pip", "--disable-pip-version-check", "install",
               "-q"]
        constraints = venv / "constraints.txt"
        constraints.write_text(f"torch=={torch_pin}\n", encoding="utf-8")
        _run([*pip, f"torch=={torch_pin}"], f"installing torch=={torch_pin} (local CPU wheel)",
             log)
        _run([*pip, "-c", str(constraints), f"torchserve=={TORCHSERVE_VERSION}",
              "torch-model-archiver", "torch-workflow-archiver", *_TS_UNDECLARED],
             "installing torchserve, torch-model-archiver, torch-workflow-archiver", log)
        ts_version, error = _probe_error(venv, _TS_PROBE)
        if ts_version is None:
            raise PeerError(f"TorchServe installed into {venv} but its worker modules do not "
                            f"import: {error}")
    tv_error = _ensure_torchvision(venv, torch_pin, log)
    return TorchServeInstall(
        venv=venv, version=ts_version,
        torch_version=_probe(venv, "import torch; print(torch.__version__)") or "?",
        torchvision_error=tv_error, java=java)


def _ensure_torchvision(venv: Path, torch_pin: str, log) -> str | None:
    """Install torchvision once; None when it imports, else why not. A wheel that installs
    but does not import (built for another torch) is uninstalled again, so that no
    TorchServe module trips over it, and the reason is kept in the venv for later runs."""
    marker = venv / "torchvision-unusable.txt"
    if marker.is_file():
        return marker.read_text(encoding="utf-8").strip()
    _, error = _probe_error(venv, "import torchvision")
    if error is None:
        return None
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={torch_pin}\n", encoding="utf-8")
    pip = [str(_venv_python(venv)), "-m", "pip", "--disable-pip-version-check"]
    try:
        _run([*pip, "install", "-q", "-c", str(constraints), "torchvision"],
             "installing torchvision (TorchServe's image_classifier needs it)", log)
        _, error = _probe_error(venv, "import torchvision")
    except PeerError as exc:
        error = str(exc).splitlines()[-1]
    if error is not None:
        log(f"  torchvision is unusable in {venv}: {error}")
        subprocess.run([*pip, "uninstall", "-y", "-q", "torchvision"], capture_output=True)
        marker.write_text(f"torchvision for torch {torch_pin}: {error}\n", encoding="utf-8")
    return error


def torchserve_env(install: TorchServeInstall) -> dict[str, str]:
    """The environment TorchServe runs in: its venv first on PATH (its workers run the
    ``python`` it finds there)."""
    env = dict(os.environ)
    env["PATH"] = f"{install.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(install.venv)
    env.pop("PYTHONPATH", None)
    return env
