"""Build the archives the scenarios serve into one store directory (``benchmarks/out/store``).

- ``echo.mar``: ``models/echo_handler.py``;
- ``sleep_<ms>.mar``: ``models/sleep_handler.py`` with ``delay_ms`` in its model-config.yaml;
- ``chain<k>.war`` (k echo nodes, batch size 1), ``chain3_batched.war`` (3 echo nodes, batch
  size 8), ``diamond.war`` (echo -> two sleep branches -> echo); ``fchain<k>[_b8].war``
  (chains of function nodes, built on demand by :func:`build_function_wars`);
- ``shapes.mar``: the example CNN, from ``model_store/`` when ``make examples`` made it, else
  archived with ``examples/build.py``'s own definition from the trained files under
  ``examples/image_classifier/build/`` (never trained here: that takes minutes).

Every archive is made by the real archiver CLIs (``python -m dagserve.archiver.model_cli`` /
``dagserve.archiver.workflow_cli``), as a user would.
"""

from __future__ import annotations

import importlib.util
import io
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ArtifactError", "BenchArtifacts", "CnnArtifacts", "build_artifacts", "chain_spec",
           "diamond_spec", "find_cnn", "sample_image"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = HERE / "models"
EXAMPLES = REPO / "examples"
CNN_NAME = "shapes"


class ArtifactError(RuntimeError):
    """An archive could not be built; the message has the archiver's own error."""


@dataclass(frozen=True)
class CnnArtifacts:
    """The example CNN: its archive, where its trained files are, and where it came from."""

    mar: Path
    model_file: Path
    state_dict: Path
    source: str


@dataclass(frozen=True)
class BenchArtifacts:
    """Everything the scenarios need, by file name inside ``store``."""

    store: Path
    echo_mar: str
    sleep_mars: dict[int, str]
    chains: dict[int, str]  # k -> war file name (batch size 1)
    chain_batched: str
    diamond: str
    diamond_ms: tuple[int, int]
    cnn: CnnArtifacts | None
    cnn_skip_reason: str | None


def _run_archiver(module: str, args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO)
    if proc.returncode != 0:
        raise ArtifactError(f"{module} {' '.join(args)} failed ({proc.returncode}): "
                            f"{proc.stderr.strip() or proc.stdout.strip()}")


def _mar(store: Path, name: str, handler: Path, *, extra: list[Path] = (),
         config: Path | None = None) -> str:
    args = ["--model-name", name, "--version", "1.0", "--handler", str(handler),
            "--export-path", str(store), "-f"]
    if extra:
        args += ["--extra-files", ",".join(str(p) for p in extra)]
    if config is not None:
        args += ["--config-file", str(config)]
    _run_archiver("dagserve.archiver.model_cli", args)
    return f"{name}.mar"


def _war(store: Path, name: str, spec_text: str, specs: Path) -> str:
    spec = specs / f"{name}.yaml"
    spec.write_text(spec_text, encoding="utf-8")
    _run_archiver("dagserve.archiver.workflow_cli", [
        "--workflow-name", name, "--spec-file", str(spec),
        "--handler", str(MODELS / "workflow_handler.py"), "--export-path", str(store), "-f"])
    return f"{name}.war"


def _models_header(batch_size: int, max_batch_delay_ms: int) -> list[str]:
    return ["models:", "  min-workers: 1", "  max-workers: 1", f"  batch-size: {batch_size}",
            f"  max-batch-delay: {max_batch_delay_ms}", "  retry-attempts: 1",
            "  timeout-ms: 10000"]


def chain_spec(k: int, echo_mar: str, *, batch_size: int = 1, max_batch_delay_ms: int = 5,
               share_workers: bool = False) -> str:
    """A workflow spec: ``k`` echo nodes n1 -> n2 -> ... -> nk (``share_workers``: in one
    worker process, ``workflow: share-workers: true``)."""
    if k < 1:
        raise ValueError(f"a chain needs at least one node, got {k}")
    lines = _models_header(batch_size, max_batch_delay_ms)
    for i in range(1, k + 1):
        lines += [f"  n{i}:", f"    url: {echo_mar}"]
    lines.append("dag:")
    for i in range(1, k):
        lines.append(f"  n{i}: [n{i + 1}]")
    if k == 1:
        lines.append("  n1: []")
    if share_workers:
        lines += ["workflow:", "  share-workers: true"]
    return "\n".join(lines) + "\n"


def function_chain_spec(k: int, *, batch_size: int = 1) -> str:
    """A workflow spec: ``k`` function nodes f1 -> ... -> fk (models/workflow_handler.py)."""
    lines = _models_header(batch_size, 5) + ["dag:"]
    lines += [f"  f{i}: [f{i + 1}]" for i in range(1, k)] or ["  f1: []"]
    return "\n".join(lines) + "\n"


def build_function_wars(art: BenchArtifacts) -> dict[str, str]:
    """The function-node chains of scenario (h) and the side-by-side run, archived into
    ``art.store``."""
    specs = art.store.parent / "specs"
    wars = {f"fchain{k}": _war(art.store, f"fchain{k}", function_chain_spec(k), specs)
            for k in (1, 3, 5)}
    for k in (1, 3):
        wars[f"fchain{k}_b8"] = _war(art.store, f"fchain{k}_b8",
                                     function_chain_spec(k, batch_size=8), specs)
    return wars


def build_shared_model_wars(art: BenchArtifacts) -> dict[str, str]:
    """The chains of echo models with ``share-workers`` of scenario (i), archived into
    ``art.store``: ``schain{1,3,5}`` and, batch size 8, ``schain{1,3}_b8``."""
    specs = art.store.parent / "specs"
    wars = {f"schain{k}": _war(art.store, f"schain{k}",
                               chain_spec(k, art.echo_mar, share_workers=True), specs)
            for k in (1, 3, 5)}
    for k in (1, 3):
        wars[f"schain{k}_b8"] = _war(art.store, f"schain{k}_b8",
                                     chain_spec(k, art.echo_mar, batch_size=8,
                                                share_workers=True), specs)
    return wars


def diamond_spec(echo_mar: str, fast_mar: str, slow_mar: str) -> str:
    """start (echo) -> fast and slow (sleep) in parallel -> join (echo, fan-in)."""
    lines = _models_header(1, 5)
    for node, mar in (("start", echo_mar), ("fast", fast_mar), ("slow", slow_mar),
                      ("join", echo_mar)):
        lines += [f"  {node}:", f"    url: {mar}"]
    lines += ["dag:", "  start: [fast, slow]", "  fast: [join]", "  slow: [join]"]
    return "\n".join(lines) + "\n"


def build_artifacts(out_dir: Path, diamond_ms: tuple[int, int] = (20, 40)) -> BenchArtifacts:
    """Archive everything into ``out_dir/store`` (rebuilt each run: it takes a second)."""
    if len(diamond_ms) != 2 or min(diamond_ms) < 0:
        raise ValueError(f"diamond branch delays must be two numbers >= 0, got {diamond_ms}")
    store = out_dir / "store"
    specs = out_dir / "specs"
    for d in (store, specs):
        d.mkdir(parents=True, exist_ok=True)
    echo = _mar(store, "echo", MODELS / "echo_handler.py")
    sleeps: dict[int, str] = {}
    for ms in sorted(set(diamond_ms)):
        config = specs / f"sleep_{ms}.yaml"
        config.write_text(f"delay_ms: {ms}\n", encoding="utf-8")
        sleeps[ms] = _mar(store, f"sleep_{ms}", MODELS / "sleep_handler.py",
                          extra=[MODELS / "echo_handler.py"], config=config)
    chains = {k: _war(store, f"chain{k}", chain_spec(k, echo), specs) for k in (1, 3, 5)}
    batched = _war(store, "chain3_batched", chain_spec(3, echo, batch_size=8), specs)
    diamond = _war(store, "diamond",
                   diamond_spec(echo, sleeps[diamond_ms[0]], sleeps[diamond_ms[1]]), specs)
    cnn, reason = find_cnn(store)
    return BenchArtifacts(store=store, echo_mar=echo, sleep_mars=sleeps, chains=chains,
                          chain_batched=batched, diamond=diamond, diamond_ms=diamond_ms,
                          cnn=cnn, cnn_skip_reason=reason)


def _import_file(name: str, path: Path):
    """Import a script that is not in a package (registered, so its dataclasses work)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _load_examples_build():
    path = EXAMPLES / "build.py"
    return _import_file("_bench_examples_build", path) if path.is_file() else None


def find_cnn(store: Path) -> tuple[CnnArtifacts | None, str | None]:
    """The example CNN's archive copied/built into ``store``, or None and why not."""
    build_dir = EXAMPLES / "image_classifier" / "build"
    model_file = EXAMPLES / "image_classifier" / "model.py"
    state_dict = build_dir / "shapes_cnn.pt"
    if not (model_file.is_file() and state_dict.is_file()):
        return None, (f"the example CNN is not trained: {state_dict} or {model_file} is "
                      f"missing (run `make examples`, which trains it)")
    made = REPO / "model_store" / f"{CNN_NAME}.mar"
    target = store / f"{CNN_NAME}.mar"
    if made.is_file() and made.stat().st_mtime >= state_dict.stat().st_mtime:
        shutil.copyfile(made, target)
        return CnnArtifacts(target, model_file, state_dict, "model_store/shapes.mar"), None
    try:
        build = _load_examples_build()
        if build is None:
            return None, "examples/build.py is missing: cannot archive the example CNN"
        archive = next((a for a in build.archives() if a.name == CNN_NAME), None)
        if archive is None:
            return None, f"examples/build.py defines no '{CNN_NAME}' archive"
        build.build_archive(archive, store, True)
    except SystemExit as exc:  # build.py reports missing inputs this way
        return None, f"examples/build.py could not archive {CNN_NAME}: {exc}"
    except Exception as exc:  # noqa: BLE001 - another engineer's script: report, do not crash
        return None, f"examples/build.py failed to archive {CNN_NAME}: {type(exc).__name__}: {exc}"
    if not target.is_file():
        return None, f"examples/build.py ran but {target} was not written"
    return CnnArtifacts(target, model_file, state_dict, "examples/build.py archives()"), None


def sample_image(seed: int = 0) -> bytes:
    """A 128 x 128 PNG of one of the example's shapes (falls back to noise without it)."""
    from PIL import Image

    rng = random.Random(seed)
    shapes_py = EXAMPLES / "image_classifier" / "shapes.py"
    image = None
    if shapes_py.is_file():
        try:
            image = _import_file("_bench_shapes", shapes_py).draw_sample(rng, 0, size=128)
        except Exception:  # noqa: BLE001 - any picture will do for a load test
            image = None
    if image is None:
        image = Image.frombytes("RGB", (128, 128), bytes(rng.randrange(256)
                                                         for _ in range(128 * 128 * 3)))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
