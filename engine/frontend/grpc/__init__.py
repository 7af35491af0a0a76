"""The gRPC APIs: TorchServe's inference and management services on
``grpc_inference_port`` / ``grpc_management_port`` (7070 / 7071, on 127.0.0.1 unless
``grpc_*_address`` says otherwise; TLS with ``enable_grpc_ssl``), and the Open Inference Protocol's
``inference.GRPCInferenceService`` beside TorchServe's on the inference port
(``ts_open_inference_protocol``). Both servers run in the server's event loop.

:func:`start_grpc` starts them and returns the coroutine function that stops them. Without
the ``grpc`` extra installed the server runs without gRPC and says so in its log.
"""

from __future__ import annotations

import logging
import os
from typing import Awaitable, Callable

from ...config import Config
from ...errors import ConfigError

log = logging.getLogger("dagserve.grpc")

Stopper = Callable[[], Awaitable[None]]


def _options(max_request_size: int, age_ms: int | None, grace_ms: int | None) -> list:
    options = [("grpc.max_receive_message_length", max_request_size),
               ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)]
    if age_ms is not None:
        options.append(("grpc.max_connection_age_ms", age_ms))
    if grace_ms is not None:
        options.append(("grpc.max_connection_age_grace_ms", grace_ms))
    return options


async def start_grpc(cfg: Config, *, registry, run_workflow, management_owner,
                     keys=None) -> Stopper:
    """Start both gRPC servers. ``management_owner``: the runtime the management calls
    act on; ``keys``: the KeyStore when token auth is on."""
    tls = _tls_pair(cfg) if cfg.enable_grpc_ssl else None
    # Workers are started with fork+exec: gRPC's fork handlers have nothing to do there
    # (and would log a line per worker start).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    try:
        import grpc

        from . import inference, management
        from .auth import TokenInterceptor
    except ImportError as exc:
        log.warning("gRPC APIs are off: install dagserve[grpc] (grpcio, grpcio-tools, "
                    "googleapis-common-protos): %s", exc)
        return _nothing

    def server(kind: str, age_ms, grace_ms) -> grpc.aio.Server:
        interceptors = [TokenInterceptor(keys, kind)] if keys is not None else []
        return grpc.aio.server(interceptors=interceptors,
                               options=_options(cfg.max_request_size, age_ms, grace_ms))

    inference_server = server("inference", cfg.grpc_inference_max_connection_age_ms,
                              cfg.grpc_inference_max_connection_age_grace_ms)
    inference.add_to_server(inference_server, registry, run_workflow)
    if cfg.ts_open_inference_protocol:
        from ..v2.core import OpenInference
        from . import open_inference

        open_inference.add_to_server(inference_server, OpenInference(registry, run_workflow))
    management_server = server("management", cfg.grpc_management_max_connection_age_ms,
                               cfg.grpc_management_max_connection_age_grace_ms)
    management.add_to_server(management_server, management_owner)

    started: list[grpc.aio.Server] = []

    async def stop() -> None:
        for s in started:
            await s.stop(grace=1.0)

    try:
        for srv, host, port in (
                (inference_server, cfg.grpc_inference_address, cfg.grpc_inference_port),
                (management_server, cfg.grpc_management_address, cfg.grpc_management_port)):
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                if tls is None:
                    srv.add_insecure_port(address)
                else:
                    srv.add_secure_port(address, grpc.ssl_server_credentials([tls]))
            except RuntimeError as exc:
                raise OSError(f"cannot listen for gRPC on {address} (address already in use?)"
                              f": {exc}") from None
            await srv.start()
            started.append(srv)
    except BaseException:
        await stop()
        raise
    log.info("gRPC inference API on %s:%d, management API on %s:%d",
             cfg.grpc_inference_address, cfg.grpc_inference_port,
             cfg.grpc_management_address, cfg.grpc_management_port)
    return stop


def _tls_pair(cfg: Config) -> tuple[bytes, bytes]:
    """(private key, certificate chain) PEM bytes for ``enable_grpc_ssl`` (TorchServe's
    ``private_key_file`` and ``certificate_file`` keys)."""
    pair = []
    for key in ("private_key_file", "certificate_file"):
        path = getattr(cfg, key)
        if path is None:
            raise ConfigError(f"enable_grpc_ssl=true needs {key} (a PEM file)")
        try:
            pair.append(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read {key} {path}: {exc.strerror}") from None
    return pair[0], pair[1]


async def _nothing() -> None:
    return None
