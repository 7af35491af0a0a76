"""Where config.properties values come from, as TorchServe 0.12's ConfigManager finds them:
which file is read (``TS_CONFIG_FILE``, ``--ts-config``, ``./config.properties``),
``$$VAR$$`` substitution in its values, and the ``TS_*`` environment variables that
``enable_envvars_config=true`` lets override them (named after ConfigManager's fields:
``TS_TOKEN_EXPIRATION_TIME_MIN`` sets ``token_expiration_min``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from .errors import ConfigError
from .ts_catalogue import CONFIG_KEYS, DAGSERVE_KEYS

_SUBSTITUTION = re.compile(r"\$\$([^$]+[^$])\$\$")

# ConfigManager fields whose name is not TS_ + the key in upper case.
_FIELD_NAMES = {"token_expiration_min": "TS_TOKEN_EXPIRATION_TIME_MIN",
                "ts_open_inference_protocol": "TS_OPEN_INFERENCE_PROTOCOL"}
# Keys ConfigManager holds in fields without the TS_ prefix: never read from the environment.
_NOT_FROM_ENV = frozenset({"use_native_io", "io_ratio", "metric_time_interval",
                           "enable_envvars_config", "model_snapshot", "models", "version",
                           "system_metrics_cmd", "use_env_allowed_urls",
                           # read whatever enable_envvars_config says (config.load_config)
                           "ts_open_inference_protocol"})
ENV_NAMES: dict[str, str] = {
    _FIELD_NAMES.get(key, "TS_" + key.upper()): key
    for key in [*CONFIG_KEYS, *sorted(DAGSERVE_KEYS - {"tsConfigFile", "workflow_snapshot"})]
    if key not in _NOT_FROM_ENV}


def config_file_path(given: Path | None, environ: Mapping[str, str],
                     workdir: Path) -> Path | None:
    """``TS_CONFIG_FILE`` wins over ``--ts-config`` (as in TorchServe); with neither,
    ``./config.properties`` when it exists."""
    if environ.get("TS_CONFIG_FILE"):
        return Path(environ["TS_CONFIG_FILE"])
    if given is not None:
        return Path(given)
    fallback = workdir / "config.properties"
    return fallback if fallback.is_file() else None


def substitute_env(props: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """Replace every ``$$NAME$$`` in a value by the variable's value; an unset variable is
    an error naming the key (TorchServe: "Invalid Environment Variable NAME")."""
    out: dict[str, str] = {}
    for key, value in props.items():
        def replace(match: re.Match, key: str = key) -> str:
            name = match.group(1)
            if name not in environ:
                raise ConfigError(f"Invalid Environment Variable {name} (in {key}: the "
                                  f"variable is not set)")
            return environ[name]
        out[key] = _SUBSTITUTION.sub(replace, value)
    return out


def env_overrides(environ: Mapping[str, str], *, allow_urls: bool) -> dict[str, str]:
    """The ``TS_*`` variables that name a config key, as properties. ``TS_ALLOWED_URLS`` is
    taken only with ``use_env_allowed_urls=true`` (a variable must not widen what the server
    downloads unless the file says so)."""
    out = {}
    for name, key in ENV_NAMES.items():
        if name in environ and (key != "allowed_urls" or allow_urls):
            out[key] = environ[name]
    return out


def log_locations(environ: Mapping[str, str], workdir: Path) -> tuple[Path, Path]:
    """``LOG_LOCATION`` and ``METRICS_LOCATION`` (relative to the working directory),
    each ``logs`` by default."""
    def resolve(name: str) -> Path:
        value = environ.get(name) or "logs"
        return (workdir / value).resolve()
    return resolve("LOG_LOCATION"), resolve("METRICS_LOCATION")
