"""TorchServe 0.12's configuration surface, one entry per key, flag and route, with
dagserve's status for each: what the start-up warning, the model-config check and
docs/compat-table.md (kept in step by tests/test_compat_table.py) all read.

Statuses: ``supported`` (as TorchServe), ``differs`` (honoured, with the difference in the
note), ``unsupported`` (read, has no effect here: named in the start-up warning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

SUPPORTED, DIFFERS, UNSUPPORTED = "supported", "differs", "unsupported"
STATUSES = (SUPPORTED, DIFFERS, UNSUPPORTED)


@dataclass(frozen=True)
class Entry:
    name: str
    status: str
    note: str = ""


def _entries(rows: Iterable[tuple[str, str, str]]) -> dict[str, Entry]:
    return {name: Entry(name, status, note) for name, status, note in rows}


S, D, U = SUPPORTED, DIFFERS, UNSUPPORTED

# Every key ConfigManager.java (v0.12.0) reads from config.properties.
CONFIG_KEYS = _entries([
    ("debug", U, "starts Java's remote debugger; there is no JVM"),
    ("inference_address", S, "http:// or https:// (TLS with certificate_file/private_key_file)"),
    ("management_address", S, "http:// or https://"),
    ("metrics_address", S, "http:// or https://"),
    ("load_models", S, "comma list of [name=]url, or ALL in any case"),
    ("blacklist_env_vars", S, "regex; matching variables are kept from the workers"),
    ("default_workers_per_model", S, ""),
    ("default_response_timeout", S, "seconds"),
    ("default_startup_timeout", S, "seconds"),
    ("unregister_model_timeout", S, "seconds an unregistration waits for running batches"),
    ("number_of_netty_threads", U, "Netty's; the frontend is one asyncio event loop"),
    ("netty_client_threads", U, "Netty's; workers talk over Unix sockets"),
    ("job_queue_size", S, ""),
    ("number_of_gpu", S, "caps the GPUs workers are spread over"),
    ("metrics_config", D, "metrics.yaml is read and checked at start; its ts_metrics gauge "
                          "names choose the system metrics collected, every other metric is "
                          "always emitted"),
    ("metrics_mode", S, ""),
    ("model_metrics_auto_detect", D, "always on: every metric a handler emits is exported"),
    ("disable_system_metrics", S, ""),
    ("ipex_enable", U, "Intel Extension for PyTorch launcher"),
    ("cpu_launcher_enable", U, "Intel CPU launcher (torch threads are sized per worker)"),
    ("cpu_launcher_args", U, "Intel CPU launcher"),
    ("ipex_gpu_enable", U, "Intel GPU metrics"),
    ("async_logging", U, "log4j's; Python logging is used"),
    ("cors_allowed_origin", S, ""),
    ("cors_allowed_methods", S, ""),
    ("cors_allowed_headers", S, ""),
    ("decode_input_request", S, ""),
    ("keystore", U, "Java keystores cannot be read: give certificate_file and "
                    "private_key_file (PEM)"),
    ("keystore_pass", U, "Java keystore"),
    ("keystore_type", U, "Java keystore"),
    ("certificate_file", S, "PEM certificate (chain) for the https:// addresses"),
    ("private_key_file", S, "PEM private key for the https:// addresses"),
    ("max_request_size", S, ""),
    ("max_response_size", S, ""),
    ("limit_max_image_pixels", S, "false lifts Pillow's decompression-bomb limit in workers"),
    ("default_service_handler", S, "handler of an archive that names none"),
    ("service_envelope", S, "json, body, kserve or kservev2, for every model's requests "
                            "(Open Inference Protocol requests always get kservev2)"),
    ("model_server_home", U, "TorchServe's install directory; nothing to locate"),
    ("model_store", S, ""),
    ("workflow_store", S, ""),
    ("prefer_direct_buffer", U, "Netty's"),
    ("allowed_urls", S, "comma list of regexes, each must match the whole url"),
    ("install_py_dep_per_model", S, "pip --target into the model's own directory"),
    ("enable_metrics_api", S, "false: the metrics port is not opened"),
    ("grpc_inference_address", S, ""),
    ("grpc_management_address", S, ""),
    ("grpc_inference_port", S, "7070; also the Open Inference Protocol's gRPC service"),
    ("grpc_management_port", S, "7071"),
    ("grpc_inference_max_connection_age_ms", S, ""),
    ("grpc_management_max_connection_age_ms", S, ""),
    ("grpc_inference_max_connection_age_grace_ms", S, ""),
    ("grpc_management_max_connection_age_grace_ms", S, ""),
    ("enable_grpc_ssl", S, "TLS with certificate_file and private_key_file (PEM)"),
    ("initial_worker_port", U, "workers use Unix sockets, not ports"),
    ("initial_distribution_port", U, "no torchrun-distributed workers"),
    ("cpp_log_config", U, "no C++ backend"),
    ("ts_open_inference_protocol", D, "the /v2 routes and gRPC service are on unless this "
                                      "is false (TorchServe: off unless true)"),
    ("token_expiration_min", S, "minutes (default 60)"),
    ("ts_header_key_sequence_id", U, "sequence headers keep TorchServe's default names "
                                     "(ts_request_sequence_id)"),
    ("ts_header_key_sequence_start", U, "default name ts_request_sequence_start"),
    ("ts_header_key_sequence_end", U, "default name ts_request_sequence_end"),
    ("disable_token_authorization", S, ""),
    ("enable_model_api", S, "also gates registering and deleting workflows"),
    ("use_native_io", U, "Netty's epoll/kqueue switch"),
    ("io_ratio", U, "Netty's"),
    ("metric_time_interval", S, "seconds between system-metric samples (default 60)"),
    ("enable_envvars_config", S, "TS_<FIELD> variables as TorchServe names them"),
    ("model_snapshot", S, "models (and dagserve's workflows) to restore at start"),
    ("models", S, "per-model JSON: minWorkers, maxWorkers, batchSize, maxBatchDelay, "
                  "responseTimeout, startupTimeout"),
    ("version", S, "written into snapshots; read and ignored"),
    ("system_metrics_cmd", U, "system metrics are collected in-process (psutil-free)"),
    ("use_env_allowed_urls", S, "TS_ALLOWED_URLS is read only when this is true"),
])

# Keys dagserve reads beyond TorchServe's (never warned about).
DAGSERVE_KEYS = frozenset({"load_workflows", "batch_size", "max_batch_delay", "tsConfigFile",
                           "workflow_snapshot", "plugins_path", "worker_fork_server",
                           "max_archive_size", "max_archive_entries", "max_archive_ratio",
                           "request_header_timeout", "request_body_timeout", "ray_address",
                           "trace_ring_size", "otel_exporter_otlp_endpoint",
                           "otel_service_name"})

# Environment variables TorchServe's start-up reads.
ENV_VARS = _entries([
    ("TS_CONFIG_FILE", S, "config file when --ts-config is not given (wins over it, as in "
                          "TorchServe); else ./config.properties when it exists"),
    ("LOG_LOCATION", S, "directory of the logs (default logs/)"),
    ("METRICS_LOCATION", S, "directory of the metrics logs (default logs/)"),
    ("TS_<FIELD>", S, "with enable_envvars_config=true, e.g. TS_JOB_QUEUE_SIZE, "
                      "TS_TOKEN_EXPIRATION_TIME_MIN"),
    ("TS_OPEN_INFERENCE_PROTOCOL", S, "oip: the Open Inference Protocol on; anything else: "
                                      "off (whatever the config says, as TorchServe)"),
])

# Every key ModelConfig.java (v0.12.0) reads from model-config.yaml, plus ``pt2`` and
# ``handler`` which its Python handlers read.
MODEL_CONFIG_KEYS = _entries([
    ("minWorkers", S, ""),
    ("maxWorkers", S, ""),
    ("batchSize", S, ""),
    ("maxBatchDelay", S, "ms"),
    ("responseTimeout", S, "seconds"),
    ("startupTimeout", S, "seconds"),
    ("deviceType", S, "cpu: workers never get a GPU; gpu: they do when one is present"),
    ("deviceIds", S, "workers are spread round-robin over these GPU ids"),
    ("jobQueueSize", S, "per model"),
    ("maxRetryTimeoutInSec", S, "how long a model keeps restarting a dead worker"),
    ("useVenv", D, "requirements already install per model into its own directory, "
                   "isolated from other models; accepted"),
    ("pt2", S, "torch.compile with the given backend; a clear warning where it cannot"),
    ("handler", S, "free-form section for the handler (context.model_yaml_config)"),
    ("parallelType", U, "no pipeline/tensor parallel workers"),
    ("parallelLevel", U, "no pipeline/tensor parallel workers"),
    ("torchrun", U, "no torchrun-distributed workers"),
    ("clientTimeoutInMills", U, "requests are bounded by responseTimeout instead"),
    ("useJobTicket", U, "a full queue already answers 503 at once"),
    ("sequenceMaxIdleMSec", U, "a sequence closes when its last waiting request ends"),
    ("sequenceTimeoutMSec", U, "a sequence closes when its last waiting request ends"),
    ("maxSequenceJobQueueSize", S, "requests of a sequence waiting behind the running one"),
    ("maxNumSequence", S, "open sequences (at least batch size x max workers)"),
    ("continuousBatching", U, "no continuous batching"),
    ("sequenceBatching", D, "a sequence's requests run one at a time, in order; they are "
                            "not pinned to one worker"),
    ("asyncCommunication", U, "no asynchronous worker protocol"),
    ("nnodes", U, "torchrun"),
    ("nproc-per-node", U, "torchrun"),
    ("rdzv-backend", U, "torchrun"),
    ("rdzv-endpoint", U, "torchrun"),
    ("rdzv-conf", U, "torchrun"),
    ("monitor-interval", U, "torchrun"),
    ("node-rank", U, "torchrun"),
    ("OMP_NUMBER_THREADS", D, "torch threads are sized per worker from the cores"),
])

# ``torchserve`` flags (ts/arg_parser.py, v0.12.0).
CLI_FLAGS = _entries([
    ("--start", S, ""),
    ("--stop", S, ""),
    ("-v/--version", S, ""),
    ("--ts-config", S, ""),
    ("--model-store", S, ""),
    ("--workflow-store", S, ""),
    ("--models", S, "also ALL"),
    ("--log-config", D, "a Python logging config (.json/.yaml/.ini), not log4j2 XML"),
    ("--cpp-log-config", U, "no C++ backend; accepted"),
    ("--foreground", S, ""),
    ("--no-config-snapshots/--ncs", S, ""),
    ("--plugins-path/--ppath", D, "accepted and checked; Java plugins cannot load"),
    ("--disable-token-auth/--dt", S, ""),
    ("--enable-model-api", S, ""),
])

# Routes of TorchServe 0.12's REST APIs.
API_ROUTES = _entries([
    ("GET /ping", S, ""),
    ("POST|PUT /predictions/{m}[/{v}]", S, ""),
    ("POST /predictions/{m}/{v}/<path>", S, "the rest of the path reaches the handler as "
                                           "the url_path header"),
    ("OPTIONS /predictions/{m}[/{v}]", S, "the model's OpenAPI description"),
    ("POST /explanations/{m}[/{v}]", S, ""),
    ("POST|PUT /wfpredict/{w}", S, ""),
    ("OPTIONS /", S, ""),
    ("GET /api-description", S, "on the inference and management ports"),
    ("POST /models", S, ""),
    ("GET /models", S, ""),
    ("GET /models/{m}[/{v}|/all]", S, "?customized=true adds the handler's describe_handle"),
    ("PUT /models/{m}[/{v}]", S, ""),
    ("PUT /models/{m}/{v}/set-default", S, ""),
    ("DELETE /models/{m}[/{v}]", S, ""),
    ("POST /workflows", S, "with response_timeout"),
    ("GET /workflows[/{w}]", S, ""),
    ("DELETE /workflows/{w}", S, ""),
    ("GET /token", S, ""),
    ("GET /metrics", S, "with CPU, memory, disk (and GPU) system metrics"),
    ("POST /v1/models/{m}:predict", U, "KServe v1 is not served by this build"),
    ("POST /v2/models/{m}/infer", S, "also a workflow's name; /v2, health, metadata, ready "
                                     "and /explain too (docs/protocols.md)"),
    ("POST /invocations, /models/{m}/invoke", U, "SageMaker routes"),
    ("plugin endpoints", U, "Java plugins cannot load"),
])

SECTIONS: dict[str, dict[str, Entry]] = {
    "config.properties": CONFIG_KEYS,
    "environment": ENV_VARS,
    "model-config.yaml": MODEL_CONFIG_KEYS,
    "torchserve command line": CLI_FLAGS,
    "API": API_ROUTES,
}


def unsupported_config_keys(props: Mapping[str, str]) -> list[str]:
    """config.properties keys that are read but have no effect here, and keys TorchServe
    does not know either (typos), in file order."""
    out = []
    for key in props:
        entry = CONFIG_KEYS.get(key)
        if entry is None and key not in DAGSERVE_KEYS:
            out.append(f"{key} (unknown)")
        elif entry is not None and entry.status == UNSUPPORTED:
            out.append(key)
    return out


def unsupported_model_config_keys(config: Mapping[str, object]) -> list[str]:
    """Top-level model-config.yaml keys TorchServe reads that have no effect here (other
    keys are the handler's own, as in TorchServe)."""
    return [key for key in config
            if (entry := MODEL_CONFIG_KEYS.get(key)) is not None and entry.status == UNSUPPORTED]


def startup_warning(props: Mapping[str, str]) -> str | None:
    """The one start-up warning: every key read but not supported, with the reason."""
    keys = unsupported_config_keys(props)
    if not keys:
        return None
    parts = []
    for key in keys:
        entry = CONFIG_KEYS.get(key)
        parts.append(f"{key}: {entry.note}" if entry is not None and entry.note else key)
    return ("config.properties keys read but not supported by dagserve (no effect): "
            + "; ".join(parts) + ". See docs/compat-table.md.")
