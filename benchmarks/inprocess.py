"""The limit for scenario (b): the same .mar's handler called in-process, in batches.

    python -m benchmarks.inprocess --mar shapes.mar --image x.png --batch 8 --seconds 5

The archive is unpacked and its handler loaded exactly as a worker would (``Context`` +
``load_handler``), then called on batches of identical requests as fast as it can go: no
HTTP, no IPC, no queue. torch uses its default thread count (every core), i.e. the same
cores the server has. Also timed: the bare model forward on preprocessed tensors
(``handler.model``, when the handler has one), the floor below any handler.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["load_entry", "main", "time_calls"]


def load_entry(model_dir: Path, batch_size: int) -> tuple[Callable, Any]:
    """The handler's per-batch entry point and its context, as a worker builds them."""
    import yaml

    from dagserve.engine.handler.context import Context
    from dagserve.engine.handler.loader import load_handler

    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text(encoding="utf-8"))
    model = manifest.get("model", {})
    config_file = model.get("configFile")
    yaml_config = {}
    if config_file:
        yaml_config = yaml.safe_load((model_dir / config_file).read_text(encoding="utf-8")) or {}
    context = Context(model.get("modelName", "model"), str(model_dir), manifest, batch_size,
                      None, "benchmark", True, None, yaml_config)
    return load_handler(model["handler"], model_dir, context), context


def time_calls(call: Callable[[], Any], seconds: float, warmup_s: float) -> tuple[int, float,
                                                                                  list[float]]:
    """Call repeatedly: ``(calls, elapsed_s, per-call seconds)`` after a warmup."""
    end_warm = time.perf_counter() + warmup_s
    while time.perf_counter() < end_warm:
        call()
    durations: list[float] = []
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        t0 = now
        call()
        now = time.perf_counter()
        durations.append(now - t0)
    return len(durations), now - start, durations


def _batch_call(entry: Callable, context: Any, image: bytes, batch: int) -> Callable[[], Any]:
    from dagserve.engine.handler.context import RequestProcessor

    data = [{"body": image} for _ in range(batch)]

    def call() -> Any:
        context.request_ids = {i: f"bench-{i}" for i in range(batch)}
        context.request_processor = [RequestProcessor({"Content-Type": "image/png"})
                                     for _ in range(batch)]
        out = entry(data, context)
        if not isinstance(out, list) or len(out) != batch:
            raise RuntimeError(f"handler returned {type(out).__name__} of length "
                               f"{len(out) if isinstance(out, list) else '?'} for a batch of "
                               f"{batch}")
        return out

    return call


def _forward_call(entry: Callable, batch: int) -> Callable[[], Any] | None:
    import torch

    handler = getattr(entry, "__self__", None)
    model = getattr(handler, "model", None)
    if model is None:
        return None
    size = 64
    config = getattr(getattr(handler, "context", None), "model_yaml_config", {}) or {}
    if isinstance(config.get("handler"), dict):
        size = int(config["handler"].get("image_size", size))
    x = torch.randn(batch, 3, size, size)

    def call() -> Any:
        with torch.inference_mode():
            return model(x)

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess",
                                     description="Time a .mar's handler called in-process.")
    parser.add_argument("--mar", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True, help="the request body (a picture)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default 0: torch's own choice, every core)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.seconds <= 0 or args.warmup < 0 or args.threads < 0:
        parser.error("--batch must be >= 1, --seconds > 0, --warmup >= 0, --threads >= 0")
    for path in (args.mar, args.image):
        if not path.is_file():
            parser.error(f"no such file: {path}")

    import torch

    from dagserve.archiver import unpack

    if args.threads:
        torch.set_num_threads(args.threads)

    image = args.image.read_bytes()
    with tempfile.TemporaryDirectory(prefix="bench-inprocess-") as tmp:
        model_dir = unpack(args.mar, Path(tmp) / "model")
        entry, context = load_entry(model_dir, args.batch)
        calls, elapsed, durations = time_calls(_batch_call(entry, context, image, args.batch),
                                               args.seconds, args.warmup)
        result: dict[str, Any] = {
            "batch": args.batch, "threads": torch.get_num_threads(), "batches": calls,
            "elapsed_s": elapsed, "items_per_s": calls * args.batch / elapsed,
            "batch_p50_ms": 1e3 * sorted(durations)[len(durations) // 2],
        }
        forward = _forward_call(entry, args.batch)
        if forward is not None:
            f_calls, f_elapsed, _ = time_calls(forward, min(args.seconds, 2.0), 0.2)
            result["forward_items_per_s"] = f_calls * args.batch / f_elapsed
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
