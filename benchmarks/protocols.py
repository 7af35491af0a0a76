"""Protocol benchmarks: the same echo model through each API dagserve speaks.

    .venv/bin/python -m benchmarks.protocols [--seconds 5] [--warmup 1] [--connections 32]

One dagserve server (echo.mar, one worker, batch size 1), then, one after another:
``POST /predictions/echo`` and ``POST /v2/models/echo/infer`` (one BYTES tensor) with the
asyncio HTTP load generator (``benchmarks/loadgen.py``) at ``--connections`` keep-alive
connections, and gRPC ``Predictions`` with a grpc.aio client keeping ``--connections``
calls in flight on one channel (HTTP/2 streams). Every client here is Python and shares
the machine with the server: its CPU time is printed beside each figure, and so is the
frontend process's CPU time per request (measured from /proc over the warmup and the run,
divided by an estimate of the requests in that time), which does not depend on the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .artifacts import MODELS, _mar
from .loadgen import LoadSpec, Target, run_load
from .procstats import _cpu_seconds
from .servers import Ports, ServerProcess, dagserve_command, free_ports, write_config

V2_BODY = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1],
                                  "data": ["hello"]}]}).encode()


async def grpc_load(target: str, connections: int, seconds: float, warmup: float) -> dict:
    """``connections`` concurrent Predictions loops on one channel; requests/s and latency."""
    import grpc

    from dagserve.engine.frontend.grpc.messages import load

    pb, services = load("inference.proto")
    request = pb.PredictionsRequest(model_name="echo", input={"data": b"x"})
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0
    measuring_from = 0.0

    async with grpc.aio.insecure_channel(target) as channel:
        stub = services.InferenceAPIsServiceStub(channel)

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    await stub.Predictions(request, timeout=30)
                except grpc.RpcError:
                    errors += 1
                    continue
                if start >= measuring_from:
                    latencies.append(time.perf_counter() - start)

        now = time.perf_counter()
        measuring_from = now + warmup
        stop_at = measuring_from + seconds
        await asyncio.sleep(0)
        usage0 = None

        async def cpu_mark() -> None:
            nonlocal usage0
            await asyncio.sleep(warmup)
            usage0 = resource.getrusage(resource.RUSAGE_SELF)

        await asyncio.gather(cpu_mark(), *(loop() for _ in range(connections)))
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
    latencies.sort()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    n = len(latencies)
    return {"rps": n / seconds, "p50_ms": latencies[n // 2] * 1e3 if n else 0.0,
            "p99_ms": latencies[int(n * 0.99)] * 1e3 if n else 0.0, "errors": errors,
            "client_cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.protocols")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dagserve-bench-protocols-"))
    try:
        store = work / "store"
        store.mkdir()
        _mar(store, "echo", MODELS / "echo_handler.py")
        inference, management, metrics, grpc_inf, grpc_mgmt = free_ports(5)
        ports = Ports(inference, management, metrics)
        config = write_config(work / "config.properties", ports, store)
        with config.open("a") as fh:
            fh.write(f"grpc_inference_port={grpc_inf}\ngrpc_management_port={grpc_mgmt}\n")
        server = ServerProcess("dagserve", dagserve_command(config, store, "echo=echo.mar"),
                               work / "server", ports)
        server.start()
        try:
            server.wait_first_inference("/predictions/echo", b"x")
            spec = LoadSpec(args.connections, args.seconds, 10**9, args.warmup)
            rows = []
            for label, path, body, ctype in (
                    ("HTTP POST /predictions/echo", "/predictions/echo", b"x",
                     "application/octet-stream"),
                    ("v2 REST POST /v2/models/echo/infer", "/v2/models/echo/infer", V2_BODY,
                     "application/json")):
                cpu0 = _cpu_seconds(server.pid)
                result = run_load(Target.from_url(server.inference + path, body=body,
                                                  content_type=ctype), spec)
                cpu = _cpu_seconds(server.pid) - cpu0
                total = result.rps * (args.seconds + args.warmup)
                rows.append((label, result.rps, result.p50_ms, result.p99_ms, result.errors,
                             result.client_cpu_s, cpu / total * 1e6 if total else 0.0))
            cpu0 = _cpu_seconds(server.pid)
            g = asyncio.run(grpc_load(f"127.0.0.1:{grpc_inf}", args.connections,
                                      args.seconds, args.warmup))
            cpu = _cpu_seconds(server.pid) - cpu0
            total = g["rps"] * (args.seconds + args.warmup)
            rows.append(("gRPC Predictions (echo)", g["rps"], g["p50_ms"], g["p99_ms"],
                         g["errors"], g["client_cpu_s"], cpu / total * 1e6 if total else 0.0))
        finally:
            server.proc.terminate()
            server.proc.wait(30)
        print(f"{args.connections} concurrent connections/streams, {args.seconds:g} s per run "
              f"after {args.warmup:g} s warmup")
        print("| API | req/s | p50 ms | p99 ms | errors | client CPU s | frontend CPU µs/req |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, rps, p50, p99, errors, cpu, per_req in rows:
            print(f"| {label} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {errors} | {cpu:.1f} | "
                  f"{per_req:.0f} |")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
