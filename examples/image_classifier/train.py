"""Train the shapes CNN on the CPU, in well under a minute, and write what the archives need.

    python examples/image_classifier/train.py                 # seed 0 -> build/shapes_cnn*
    python examples/image_classifier/train.py --seed 1 --name shapes_cnn_b
    python examples/image_classifier/train.py --force         # retrain even if up to date

Writes into ``--out-dir`` (default ``examples/image_classifier/build``):

- ``<name>.pt``          the state dict (for ``--model-file model.py --serialized-file``)
- ``<name>_ts.pt``       the same model as TorchScript (served with no model file)
- ``<name>.json``        the figures the training reached (seed, times, held-out accuracy)
- ``index_to_name.json`` class index -> label

Training is seeded (weights, data, batch order) and runs on ``--threads`` CPU threads, so
the same seed and thread count give the same weights, bit for bit (another thread count
sums in another order: slightly different weights). The default is one thread: measured on
a 2-core machine it takes about 30 s whether or not other jobs load the machine, where two
threads took 17 s idle but 55-75 s when the cores were shared (each step waits for the
slower thread).

The held-out set is drawn with a seed no training set uses, the same for every model. A
model that does not reach ``--min-accuracy`` (95 %) on it is not written. When every output
exists, is newer than the sources (this file, ``model.py``, ``shapes.py``) and was trained
with the same seed and thread count, nothing is trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import shapes  # noqa: E402
from model import ShapesCNN  # noqa: E402

DEFAULT_OUT_DIR = HERE / "build"
SOURCES = (HERE / "train.py", HERE / "model.py", HERE / "shapes.py")

TRAIN_SIZE = 5000
HELDOUT_SIZE = 1200
HELDOUT_SEED = 7_777_777  # training sets use TRAIN_SEED_BASE + seed, far from this
TRAIN_SEED_BASE = 1000
EPOCHS = 6
BATCH_SIZE = 64
MAX_LR = 4e-3


@dataclass
class TrainResult:
    """What one training reached, also written to ``<name>.json``."""

    name: str
    seed: int
    threads: int
    epochs: int
    train_size: int
    heldout_size: int
    data_seconds: float
    train_seconds: float
    heldout_accuracy: float
    trained: bool = True  # False when the outputs were up to date and nothing ran


@dataclass(frozen=True)
class Outputs:
    state_dict: Path
    torchscript: Path
    figures: Path
    index_to_name: Path

    @classmethod
    def for_name(cls, out_dir: Path, name: str) -> "Outputs":
        return cls(out_dir / f"{name}.pt", out_dir / f"{name}_ts.pt", out_dir / f"{name}.json",
                   out_dir / "index_to_name.json")

    def all(self) -> tuple[Path, ...]:
        return (self.state_dict, self.torchscript, self.figures, self.index_to_name)


def up_to_date(outputs: Outputs) -> bool:
    """Every output exists and is newer than every source file."""
    newest_source = max(p.stat().st_mtime for p in SOURCES)
    return all(p.is_file() and p.stat().st_mtime > newest_source for p in outputs.all())


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process (only allowed once)


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in images.split(256)])
    return (predicted == labels).float().mean().item()


def _fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
         seed: int, log: bool) -> None:
    """AdamW with a one-cycle schedule; random horizontal flips (every class is symmetric
    under them), batch order from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    steps_per_epoch = (n + BATCH_SIZE - 1) // BATCH_SIZE
    optimizer = torch.optim.AdamW(model.parameters(), lr=MAX_LR, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LR,
                                                   total_steps=EPOCHS * steps_per_epoch)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(n, generator=generator)
        total_loss = 0.0
        for start in range(0, n, BATCH_SIZE):
            idx = order[start:start + BATCH_SIZE]
            batch = images[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
            loss = F.cross_entropy(model(batch), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(idx)
        if log:
            print(f"  epoch {epoch + 1}/{EPOCHS}: mean loss {total_loss / n:.4f}", flush=True)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def train(seed: int = 0, name: str = "shapes_cnn", out_dir: Path = DEFAULT_OUT_DIR, *,
          threads: int = 1, force: bool = False, min_accuracy: float = 0.95,
          log: bool = True) -> TrainResult:
    """Train (unless up to date), check the held-out accuracy, write the outputs."""
    out_dir = Path(out_dir)
    outputs = Outputs.for_name(out_dir, name)
    if not force and up_to_date(outputs):
        try:
            done = TrainResult(**{**json.loads(outputs.figures.read_text(encoding="utf-8")),
                                  "trained": False})
        except (ValueError, TypeError):
            done = None  # unreadable figures: train again
        if done is not None and (done.seed, done.threads) == (seed, threads):
            return done
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")

    _set_threads(threads)
    started = time.perf_counter()
    train_x, train_y = shapes.make_dataset(TRAIN_SIZE, TRAIN_SEED_BASE + seed)
    test_x, test_y = shapes.make_dataset(HELDOUT_SIZE, HELDOUT_SEED)
    data_seconds = time.perf_counter() - started
    if log:
        print(f"{name}: drew {TRAIN_SIZE} training and {HELDOUT_SIZE} held-out pictures in "
              f"{data_seconds:.1f} s; training on {threads} thread(s), seed {seed}", flush=True)

    torch.manual_seed(seed)
    model = ShapesCNN(num_classes=len(shapes.LABELS))
    started = time.perf_counter()
    _fit(model, train_x, train_y, seed, log)
    train_seconds = time.perf_counter() - started
    reached = accuracy(model, test_x, test_y)
    result = TrainResult(name, seed, threads, EPOCHS, TRAIN_SIZE, HELDOUT_SIZE,
                         round(data_seconds, 2), round(train_seconds, 2), round(reached, 4))
    if reached < min_accuracy:
        raise RuntimeError(f"{name}: held-out accuracy {reached:.2%} is below the required "
                           f"{min_accuracy:.0%}; nothing written")

    model.eval()
    example = test_x[:2]
    scripted = torch.jit.trace(model, example)
    with torch.inference_mode():
        if not torch.allclose(scripted(test_x[:64]), model(test_x[:64]), atol=1e-5):
            raise RuntimeError(f"{name}: the TorchScript model disagrees with the eager one")

    out_dir.mkdir(parents=True, exist_ok=True)
    mapping = {str(i): label for i, label in enumerate(shapes.LABELS)}
    _atomic_write(outputs.state_dict, lambda p: torch.save(model.state_dict(), p))
    _atomic_write(outputs.torchscript, lambda p: torch.jit.save(scripted, str(p)))
    _atomic_write(outputs.index_to_name,
                  lambda p: p.write_text(json.dumps(mapping, indent=2) + "\n", encoding="utf-8"))
    figures = {k: v for k, v in asdict(result).items() if k != "trained"}
    _atomic_write(outputs.figures,
                  lambda p: p.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8"))
    return result


def describe(result: TrainResult) -> str:
    how = "trained" if result.trained else "up to date, not retrained; figures from its training"
    return (f"{result.name} ({how}): seed {result.seed}, {result.epochs} epochs over "
            f"{result.train_size} pictures on {result.threads} thread(s) in "
            f"{result.train_seconds:.1f} s (+{result.data_seconds:.1f} s drawing data); "
            f"held-out accuracy {result.heldout_accuracy:.2%} on {result.heldout_size} pictures")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the shapes CNN (CPU).")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, data and order")
    parser.add_argument("--name", default="shapes_cnn", help="output file stem (shapes_cnn)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help=f"output directory (default {DEFAULT_OUT_DIR})")
    parser.add_argument("--threads", type=int, default=1, choices=(1, 2),
                        help="CPU threads (default 1; see the module docstring)")
    parser.add_argument("--min-accuracy", type=float, default=0.95,
                        help="fail below this held-out accuracy (default 0.95)")
    parser.add_argument("--force", action="store_true", help="retrain even if up to date")
    args = parser.parse_args(argv)
    if not args.name or "/" in args.name or args.name.startswith("."):
        parser.error(f"--name must be a plain file stem, got {args.name!r}")
    try:
        result = train(args.seed, args.name, args.out_dir, threads=args.threads,
                       force=args.force, min_accuracy=args.min_accuracy)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    print(describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
