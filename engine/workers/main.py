"""The worker process: ``python -m dagserve.engine.workers.main --settings '<json>'``.

It connects to the frontend's Unix socket (``settings.socket``: a path, or an abstract name
starting with NUL), loads the model's handler and says ``ready``
(or ``load_failed`` with a one-line reason, then exits 1), then serves ``predict`` frames
until the frontend closes the socket (exit 0).

Settings: a :class:`~.settings.WorkerSettings` as JSON (unknown keys and wrong types are a
usage error, exit 2).

torch is not imported unless the handler needs it (a workflow's function worker starts in a
fraction of the time): the thread limit is passed as ``OMP_NUM_THREADS`` before loading and
applied with ``torch.set_num_threads`` after, when torch was loaded.

stdout and stderr go to the model log: load progress and tracebacks are written to stderr,
handler ``print``/``logging`` output to stdout.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
import traceback
from pathlib import Path
from time import perf_counter
from typing import Any

from . import protocol
from .interrupt import BatchGuard, BatchInterrupted
from .settings import WorkerSettings


def _parse_settings(argv: list[str] | None) -> WorkerSettings:
    parser = argparse.ArgumentParser(prog="python -m dagserve.engine.workers.main",
                                     description="dagserve worker process")
    parser.add_argument("--settings", required=True, help="the worker settings as JSON")
    args = parser.parse_args(argv)
    try:
        return WorkerSettings.from_json(args.settings)
    except ValueError as exc:
        parser.error(f"--settings {exc}")


def _limit_threads_before_load(threads: int) -> None:
    """torch is imported (if at all) by the handler: have it start with ``threads``."""
    if threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def _limit_threads_after_load(threads: int) -> None:
    torch = sys.modules.get("torch")
    if torch is None or threads <= 0:
        return
    try:
        torch.set_num_threads(threads)
    except RuntimeError as exc:
        print(f"could not set torch threads to {threads}: {exc}", file=sys.stderr)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # parallel work already started during load: keep torch's default


def _one_line(exc: BaseException, limit: int = 2000) -> str:
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def serve(sock: socket.socket, service: Any, guard: BatchGuard | None = None) -> None:
    """Answer ``predict`` frames until the peer closes the socket."""
    from .intermediate import IntermediateChannel

    sendall = sock.sendall
    decode_predict, encode_result = protocol.decode_predict, protocol.encode_result
    predict = service.predict
    if guard is None:
        guard = BatchGuard()
        guard.install()
    channel = IntermediateChannel(sock, protocol.FrameReader(sock), guard)
    service.context.intermediate_sender = channel.send
    read = channel.next_frame
    interrupted = protocol.pack({"op": "interrupted"})
    while True:
        try:
            meta, body = read()
        except EOFError:
            return
        op = meta.get("op")
        if op != "predict":
            if op == "cancel":  # the stream it names has already ended
                continue
            raise protocol.ProtocolError(f"unexpected frame op {op!r} (expected 'predict')")
        requests = decode_predict(meta, body)
        started = perf_counter()
        try:
            with guard:
                responses, metrics = predict(requests)
        except BatchInterrupted:
            print(f"worker {os.getpid()}: batch interrupted (abandoned by the frontend)",
                  file=sys.stderr)
            sendall(interrupted)
            continue
        sendall(encode_result(responses, metrics, handler_s=perf_counter() - started))
        if channel.cancelled:
            channel.cancelled.difference_update(r.id for r in requests)


def _settle_heap() -> None:
    """Move everything loading created (torch, the model) out of the garbage collector's
    view: a full collection then walks only what serving allocates, instead of pausing a
    batch for tens of milliseconds to scan the model's objects again and again."""
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    settings = _parse_settings(argv)
    sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    model_dir = str(Path(settings.model_dir).resolve())
    sys.path.insert(0, model_dir)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(settings.socket)
    except OSError as exc:
        print(f"worker could not connect to {settings.socket!r}: {exc}", file=sys.stderr)
        return 2

    name = settings.model_name
    print(f"worker {os.getpid()}: loading model {name} from {model_dir}", file=sys.stderr)
    try:
        _limit_threads_before_load(settings.threads)
        from ..handler import ts_alias
        from ..handler.service import load_service

        ts_alias.install()
        service = load_service(settings.service_config())
        _limit_threads_after_load(settings.threads)
        _settle_heap()
    except BaseException as exc:  # noqa: BLE001 - any failure is reported, then we exit
        if isinstance(exc, KeyboardInterrupt):
            return 130
        traceback.print_exc(file=sys.stderr)
        message = _one_line(exc)
        try:
            protocol.send_frame(sock, protocol.pack({"op": "load_failed", "message": message}))
        except OSError:
            pass
        sock.close()
        return 1
    print(f"worker {os.getpid()}: model {name} loaded", file=sys.stderr)

    try:
        guard = BatchGuard()
        guard.install()  # before "ready": from then on the frontend may send the signal
        protocol.send_frame(sock, protocol.pack({"op": "ready", "pid": os.getpid()}))
        serve(sock, service, guard)
    except KeyboardInterrupt:
        return 130
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the frontend went away: same as a close
    except (OSError, protocol.ProtocolError) as exc:
        print(f"worker {os.getpid()}: connection error: {_one_line(exc)}", file=sys.stderr)
        return 3
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
