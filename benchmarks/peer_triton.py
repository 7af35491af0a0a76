"""NVIDIA Triton Inference Server as a peer: the ``tritonserver`` binary that the
``nvidia-pytriton`` wheel ships, in its own virtualenv, serving python-backend echo models.

``benchmarks/.venv-triton`` gets ``nvidia-pytriton`` and numpy (the echo models need nothing
else: no torch, no CUDA). The wheel keeps the server under ``pytriton/tritonserver/`` with
one python-backend stub per Python version; PyTriton itself copies that tree to a workspace,
puts the stub of the running Python at ``backends/python/triton_python_backend_stub`` and
runs the binary with ``LD_LIBRARY_PATH`` at ``nvidia_pytriton.libs``. :func:`prepare_server`
does the same once, into ``<venv>/tritonserver``, so the binary runs on its own.

The model repository (:func:`write_model_repository`) holds ``echo`` and ``node1`` ...
``node<k>`` (the same python-backend model: ``execute`` returns each request's ``INPUT``
tensor as ``OUTPUT``), and ensembles ``chain<k>`` that pass a request through ``node1`` ...
``node<k>``. The server starts in explicit model-control mode with ``echo`` loaded; the
others are loaded and unloaded through ``POST /v2/repository/models/<name>/load|unload``.
A request is KServe v2 REST infer with Triton's binary-tensor extension: a JSON header
(``Inference-Header-Content-Length`` says its length) followed by the raw body as one UINT8
tensor, so the body on the wire is the same 1 KB as for the other servers plus ~150 bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .peer import PeerError, _probe, _probe_error, _run, _venv_python

__all__ = ["DEFAULT_TRITON_VENV", "TritonInstall", "ensure_triton", "infer_request",
           "model_config", "ensemble_config", "prepare_server", "triton_command",
           "triton_env", "write_model_repository"]

HERE = Path(__file__).resolve().parent
DEFAULT_TRITON_VENV = HERE / ".venv-triton"
PYTRITON_SPEC = "nvidia-pytriton==0.7.0"
_PROBE = ("import importlib.metadata as m, pytriton, pathlib; "
          "print(m.version('nvidia-pytriton'), pathlib.Path(pytriton.__file__).parent)")

ECHO_MODEL_PY = '''"""Echo: every request's INPUT tensor back as OUTPUT (the cost of serving nothing)."""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
                    "OUTPUT", pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy())])
                for r in requests]
'''

_IO = ('input [ { name: "INPUT" data_type: TYPE_UINT8 dims: [ -1 ] } ]\n'
       'output [ { name: "OUTPUT" data_type: TYPE_UINT8 dims: [ -1 ] } ]\n')


@dataclass(frozen=True)
class TritonInstall:
    venv: Path
    version: str  # nvidia-pytriton's version (the server build it bundles)
    server_dir: Path  # <venv>/tritonserver: bin/, backends/ (stub in place), caches/
    libs: Path  # nvidia_pytriton.libs


def model_config(name: str) -> str:
    """config.pbtxt of one python-backend echo model (no batching dimension: one request,
    one tensor of any length; one CPU instance)."""
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n{_IO}'
            'instance_group [ { count: 1 kind: KIND_CPU } ]\n')


def ensemble_config(name: str, nodes: list[str]) -> str:
    """config.pbtxt of an ensemble passing INPUT through ``nodes`` in order."""
    if not nodes:
        raise ValueError("an ensemble needs at least one step")
    steps = []
    for i, node in enumerate(nodes):
        src = "INPUT" if i == 0 else f"t{i}"
        dst = "OUTPUT" if i == len(nodes) - 1 else f"t{i + 1}"
        steps.append(f'    {{ model_name: "{node}" model_version: -1\n'
                     f'      input_map {{ key: "INPUT" value: "{src}" }}\n'
                     f'      output_map {{ key: "OUTPUT" value: "{dst}" }} }}')
    return (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 0\n{_IO}'
            'ensemble_scheduling {\n  step [\n' + ",\n".join(steps) + "\n  ]\n}\n")


def write_model_repository(root: Path, chains: tuple[int, ...] = (1, 3)) -> Path:
    """``echo``, ``node1..node<max k>`` and one ensemble ``chain<k>`` per ``k``."""
    if root.exists():
        shutil.rmtree(root)
    longest = max(chains, default=0)
    for name in ["echo", *(f"node{i}" for i in range(1, longest + 1))]:
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(model_config(name), encoding="utf-8")
        (root / name / "1" / "model.py").write_text(ECHO_MODEL_PY, encoding="utf-8")
    for k in chains:
        name = f"chain{k}"
        (root / name / "1").mkdir(parents=True)  # an ensemble needs an (empty) version
        (root / name / "config.pbtxt").write_text(
            ensemble_config(name, [f"node{i}" for i in range(1, k + 1)]), encoding="utf-8")
    return root


def chain_models(k: int) -> list[str]:
    """What loading ensemble ``chain<k>`` needs, in load order."""
    return [*(f"node{i}" for i in range(1, k + 1)), f"chain{k}"]


def infer_request(body: bytes) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """A v2 REST infer request carrying ``body`` as one binary UINT8 tensor, and its headers."""
    header = json.dumps({
        "inputs": [{"name": "INPUT", "shape": [len(body)], "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(body)}}],
        "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": True}}]},
        separators=(",", ":")).encode()
    return header + body, (("Inference-Header-Content-Length", str(len(header))),)


def ensure_triton(venv: Path = DEFAULT_TRITON_VENV, log=print) -> TritonInstall:
    """Install (once) nvidia-pytriton into ``venv`` and lay out its server to run alone."""
    found, error = _probe_error(venv, _PROBE)
    if found is None:
        log(f"installing {PYTRITON_SPEC} into {venv} (once; ~1 minute)")
        if not _venv_python(venv).is_file():
            base = shutil.which("python3") or sys.executable
            _run([base, "-m", "venv", str(venv)], "creating the Triton venv", log)
        _run([str(_venv_python(venv)), "-m", "pip", "--disable-pip-version-check", "install",
              "-q", PYTRITON_SPEC, "numpy"], f"installing {PYTRITON_SPEC}", log)
        found, error = _probe_error(venv, _PROBE)
        if found is None:
            raise PeerError(f"{PYTRITON_SPEC} installed into {venv} but does not import: {error}")
    version, package = found.split(" ", 1)
    package_dir = Path(package)
    py = _probe(venv, "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
    if py is None:
        raise PeerError(f"the Python of {venv} does not run")
    server_dir = prepare_server(package_dir / "tritonserver", venv / "tritonserver", py)
    return TritonInstall(venv, version, server_dir, package_dir.parent / "nvidia_pytriton.libs")


def prepare_server(dist: Path, dest: Path, python_version: str) -> Path:
    """Copy the wheel's server tree to ``dest`` with the stub for ``python_version`` in
    ``backends/python`` (what PyTriton does before each start); kept once made."""
    stub = dest / "backends" / "python" / "triton_python_backend_stub"
    if stub.is_file() and (dest / "bin" / "tritonserver").is_file():
        return dest
    source_stub = dist / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not source_stub.is_file():
        raise PeerError(f"nvidia-pytriton has no python-backend stub for Python "
                        f"{python_version} ({source_stub} is missing)")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(dist, dest, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(source_stub, stub)
    return dest


def triton_command(install: TritonInstall, repository: Path, http_port: int, grpc_port: int,
                   metrics_port: int, load: tuple[str, ...] = ("echo",)) -> list[str]:
    """tritonserver on loopback ports, explicit model control with ``load`` loaded."""
    return [str(install.server_dir / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={install.server_dir / 'backends'}",
            f"--cache-directory={install.server_dir / 'caches'}",
            "--http-address=127.0.0.1", f"--http-port={http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
            "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
            "--model-control-mode=explicit", *(f"--load-model={m}" for m in load),
            "--exit-on-error=true", "--log-verbose=0"]


def triton_env(install: TritonInstall) -> dict[str, str]:
    """The server's environment: its libraries on LD_LIBRARY_PATH, its venv first on PATH
    (the python-backend stub imports numpy from the Python it finds)."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = f"{install.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(install.venv)
    env.pop("PYTHONPATH", None)
    return env
