"""Server configuration: config.properties, then ``TS_*`` environment variables (only when
``enable_envvars_config=true``), then command-line flags, folded into one frozen ``Config``.

It is read once at start and passed down; no other module reads the environment.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .config_sources import (config_file_path, env_overrides, log_locations,
                             substitute_env)
from .errors import ConfigError
from .properties import parse_properties
from .ts_catalogue import startup_warning

DEFAULT_ALLOWED_URLS = ("file://.*|http(s)?://.*",)


@dataclass(frozen=True)
class Config:
    inference_address: str = "http://127.0.0.1:8080"
    management_address: str = "http://127.0.0.1:8081"
    metrics_address: str = "http://127.0.0.1:8082"
    model_store: Path | None = None
    workflow_store: Path | None = None
    load_models: tuple[str, ...] = ()
    load_workflows: tuple[str, ...] = ()
    default_workers_per_model: int = 0  # 0: one per visible GPU, else per CPU core
    job_queue_size: int = 100
    default_response_timeout: int = 120  # seconds
    default_startup_timeout: int = 120  # seconds
    max_request_size: int = 6553500
    max_response_size: int = 6553500
    # archives a registration may unpack (dagserve's keys; TorchServe has none)
    max_archive_size: int = 1 << 30  # bytes of content
    max_archive_entries: int = 10_000
    max_archive_ratio: int = 100  # content bytes per archive byte (zip bombs)
    request_header_timeout: int = 30  # seconds for a request's headers to arrive (slowloris)
    request_body_timeout: int = 60  # seconds for its body to arrive after them
    allowed_urls: tuple[str, ...] = DEFAULT_ALLOWED_URLS
    enable_model_api: bool = False
    disable_token_authorization: bool = False
    decode_input_request: bool = True
    install_py_dep_per_model: bool = False
    metrics_mode: str = "prometheus"
    models: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 1
    max_batch_delay: int = 100  # ms
    number_of_gpu: int | None = None
    cors_allowed_origin: str | None = None
    cors_allowed_methods: str | None = None
    cors_allowed_headers: str | None = None
    snapshots: bool = True
    worker_fork_server: bool = True  # fork workers from one process that imported torch
    log_dir: Path = Path("logs")
    workdir: Path = Path(".")
    foreground: bool = False
    plugins_path: Path | None = None
    log_config: Path | None = None
    config_file: Path | None = None
    metrics_dir: Path = Path("logs")
    certificate_file: Path | None = None
    private_key_file: Path | None = None
    blacklist_env_vars: str | None = None
    unregister_model_timeout: int = 120  # seconds
    limit_max_image_pixels: bool = True
    default_service_handler: str | None = None
    enable_metrics_api: bool = True
    disable_system_metrics: bool = False
    metrics_config: Path | None = None
    metric_time_interval: int = 60  # seconds
    token_expiration_min: float = 60.0
    model_snapshot: str | None = None
    startup_warnings: tuple[str, ...] = ()
    # gRPC (TorchServe's keys; the servers are in frontend/grpc/)
    grpc_inference_address: str = "127.0.0.1"
    grpc_management_address: str = "127.0.0.1"
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    grpc_inference_max_connection_age_ms: int | None = None
    grpc_management_max_connection_age_ms: int | None = None
    grpc_inference_max_connection_age_grace_ms: int | None = None
    grpc_management_max_connection_age_grace_ms: int | None = None
    enable_grpc_ssl: bool = False  # TLS on both gRPC ports (certificate_file, private_key_file)
    # the Open Inference Protocol (KServe v2) on the inference ports; TorchServe's key (and
    # TS_OPEN_INFERENCE_PROTOCOL=oip); on unless set to false (TorchServe: off by default)
    ts_open_inference_protocol: bool = True
    service_envelope: str | None = None  # json, body, kserve or kservev2, for every model
    trace_ring_size: int = 200  # traces kept in memory (tracing.py)
    otel_exporter_otlp_endpoint: str | None = None  # OTLP/HTTP base URL; None: no export
    otel_service_name: str = "dagserve"
    ray_address: str | None = None  # auto, host:port or ray://host:port: workers on Ray

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    def with_(self, **changes: Any) -> "Config":
        return replace(self, **changes)


_BOOL_KEYS = {"enable_model_api", "disable_token_authorization", "decode_input_request",
              "install_py_dep_per_model", "enable_envvars_config", "limit_max_image_pixels",
              "enable_metrics_api", "disable_system_metrics", "use_env_allowed_urls",
              "worker_fork_server", "enable_grpc_ssl", "ts_open_inference_protocol"}
_INT_KEYS = {"default_workers_per_model", "job_queue_size", "default_response_timeout",
             "default_startup_timeout", "max_request_size", "max_response_size", "batch_size",
             "max_batch_delay", "number_of_gpu", "unregister_model_timeout",
             "metric_time_interval", "max_archive_size", "max_archive_entries",
             "max_archive_ratio", "request_header_timeout", "request_body_timeout",
             "grpc_inference_port", "grpc_management_port",
             "grpc_inference_max_connection_age_ms", "grpc_management_max_connection_age_ms",
             "grpc_inference_max_connection_age_grace_ms",
             "grpc_management_max_connection_age_grace_ms", "trace_ring_size"}
_STR_KEYS = {"inference_address", "management_address", "metrics_address", "metrics_mode",
             "cors_allowed_origin", "cors_allowed_methods", "cors_allowed_headers",
             "blacklist_env_vars", "default_service_handler", "model_snapshot",
             "grpc_inference_address", "grpc_management_address", "ray_address",
             "otel_exporter_otlp_endpoint", "otel_service_name"}
_PATH_KEYS = {"model_store", "workflow_store", "plugins_path", "certificate_file",
              "private_key_file", "metrics_config"}
_READ_ONLY_BOOLS = {"enable_envvars_config", "use_env_allowed_urls"}  # steer loading only
ENVELOPES = ("json", "body", "kserve", "kservev2")
_LIST_KEYS = {"load_models", "load_workflows"}


def _parse_bool(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _parse_int(key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {value!r}") from None


def _check_regex(key: str, value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{key} is not a valid regular expression: {exc}") from None


def _check_json_object(key: str, value: str) -> None:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{key} must be JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{key} must be a JSON object")


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.replace(" ", ",").split(",") if v.strip())


def apply_properties(cfg: Config, props: Mapping[str, str], base: Path) -> Config:
    """Fold known keys into ``cfg``; unknown keys are ignored as TorchServe ignores them."""
    changes: dict[str, Any] = {}
    for key, value in props.items():
        if key in _BOOL_KEYS:
            parsed = _parse_bool(key, value)
            if key not in _READ_ONLY_BOOLS:
                changes[key] = parsed
        elif key in _INT_KEYS:
            changes[key] = _parse_int(key, value)
        elif key in _STR_KEYS:
            if key == "blacklist_env_vars":
                _check_regex(key, value)
            elif key == "model_snapshot":
                _check_json_object(key, value)
            changes[key] = value
        elif key in _PATH_KEYS:
            changes[key] = (base / value).resolve() if value else None
        elif key in _LIST_KEYS:
            changes[key] = _split_list(value)
        elif key == "allowed_urls":
            changes[key] = tuple(v.strip() for v in value.split(",") if v.strip())
        elif key == "service_envelope":
            if value and value not in ENVELOPES:
                raise ConfigError(f"service_envelope must be one of {', '.join(ENVELOPES)}, "
                                  f"got {value!r}")
            changes[key] = value or None
        elif key == "token_expiration_min":
            try:
                changes[key] = float(value)
            except ValueError:
                raise ConfigError(f"{key} must be a number of minutes, got {value!r}") from None
        elif key == "models":
            try:
                changes[key] = json.loads(value) if value else {}
            except json.JSONDecodeError as exc:
                raise ConfigError(f"models must be JSON: {exc}") from None
    return replace(cfg, **changes)


def load_config(*, config_file: Path | None = None, environ: Mapping[str, str] | None = None,
                workdir: Path | None = None, **flags: Any) -> Config:
    """Build the Config. ``flags`` are CLI values; ``None`` means "not given"."""
    environ = os.environ if environ is None else environ
    workdir = (workdir or Path.cwd()).resolve()
    log_dir, metrics_dir = log_locations(environ, workdir)
    cfg = Config(workdir=workdir, log_dir=log_dir, metrics_dir=metrics_dir)
    config_file = config_file_path(config_file, environ, workdir)
    props: dict[str, str] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            props = parse_properties(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        props = substitute_env(props, environ)
        cfg = replace(cfg, config_file=path.resolve())
        cfg = apply_properties(cfg, props, path.resolve().parent)
    if _parse_bool("enable_envvars_config", props.get("enable_envvars_config", "false")):
        allow_urls = _parse_bool("use_env_allowed_urls",
                                 props.get("use_env_allowed_urls", "false"))
        overrides = env_overrides(environ, allow_urls=allow_urls)
        cfg = apply_properties(cfg, overrides, workdir)
        props = {**props, **overrides}
    if environ.get("TS_OPEN_INFERENCE_PROTOCOL"):  # TorchServe reads it whatever the config
        cfg = replace(cfg, ts_open_inference_protocol=environ["TS_OPEN_INFERENCE_PROTOCOL"]
                      == "oip")
    warning = startup_warning(props)
    cfg = replace(cfg, startup_warnings=(warning,) if warning else ())
    given = {k: v for k, v in flags.items() if v is not None}
    for key in ("model_store", "workflow_store", "log_config", "plugins_path"):
        if key in given:
            given[key] = Path(given[key]).resolve()
    cfg = replace(cfg, **given)
    if cfg.workflow_store is None and cfg.model_store is not None:
        cfg = replace(cfg, workflow_store=cfg.model_store)
    if not cfg.otel_exporter_otlp_endpoint and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        cfg = replace(cfg, otel_exporter_otlp_endpoint=environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
    if cfg.trace_ring_size < 0:
        raise ConfigError(f"trace_ring_size must be 0 or more, got {cfg.trace_ring_size}")
    return cfg


def split_address(address: str) -> tuple[str, int]:
    """``http://127.0.0.1:8080`` -> (host, port)."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address must look like http://host:port, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def startup_entries(items: tuple[str, ...], store: Path | None,
                    is_archive: Callable[[Path], bool]) -> list[tuple[str | None, str]]:
    """``--models`` / ``--workflows`` (and ``load_models`` / ``load_workflows``) as
    (name or None, url) pairs: ``name=url`` or ``url``; ``all`` = every archive in ``store``."""
    entries: list[tuple[str | None, str]] = []
    for item in items:
        if item.lower() == "all":  # TorchServe: ALL, any case
            if store is not None and store.is_dir():
                entries += [(None, p.name) for p in sorted(store.iterdir()) if is_archive(p)]
            continue
        name, sep, url = item.partition("=")
        entries.append((name, url) if sep else (None, item))
    return entries
