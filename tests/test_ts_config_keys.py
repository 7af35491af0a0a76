"""config.properties as TorchServe 0.12's ConfigManager reads it (unit level, no server):
which file is read, ``$$VAR$$`` substitution, ``TS_*`` variables by ConfigManager's field
names, ``use_env_allowed_urls``, ``LOG_LOCATION``/``METRICS_LOCATION``, ``load_models=ALL``,
the keys dagserve now honours, and the one warning naming keys read but unsupported."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagserve.engine.config import load_config, startup_entries
from dagserve.engine.errors import ConfigError
from dagserve.engine.ts_catalogue import CONFIG_KEYS, UNSUPPORTED
from dagserve.engine.workers.environment import worker_environment


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_ts_config_file_wins_over_the_flag_and_cwd_file_is_the_fallback(tmp_path):
    env_file = write(tmp_path / "env.properties", "job_queue_size=7\n")
    flag_file = write(tmp_path / "flag.properties", "job_queue_size=8\n")
    write(tmp_path / "config.properties", "job_queue_size=9\n")
    cfg = load_config(config_file=flag_file, environ={"TS_CONFIG_FILE": str(env_file)},
                      workdir=tmp_path)
    assert cfg.job_queue_size == 7
    assert load_config(config_file=flag_file, environ={}, workdir=tmp_path).job_queue_size == 8
    assert load_config(environ={}, workdir=tmp_path).job_queue_size == 9
    (tmp_path / "config.properties").unlink()
    cfg = load_config(environ={}, workdir=tmp_path)
    assert cfg.job_queue_size == 100 and cfg.config_file is None


def test_dollar_substitution_and_an_unset_variable(tmp_path):
    path = write(tmp_path / "c.properties",
                 "model_store=$$STORE$$\ncors_allowed_origin=https://$$HOST$$:$$PORT$$\n")
    (tmp_path / "models").mkdir()
    cfg = load_config(config_file=path, workdir=tmp_path,
                      environ={"STORE": "models", "HOST": "a.example", "PORT": "443"})
    assert cfg.model_store == (tmp_path / "models").resolve()
    assert cfg.cors_allowed_origin == "https://a.example:443"
    with pytest.raises(ConfigError, match="Invalid Environment Variable PORT"):
        load_config(config_file=path, workdir=tmp_path, environ={"STORE": "m", "HOST": "h"})


def test_env_vars_use_configmanager_field_names(tmp_path):
    path = write(tmp_path / "c.properties", "enable_envvars_config=true\n")
    environ = {"TS_TOKEN_EXPIRATION_TIME_MIN": "5", "TS_JOB_QUEUE_SIZE": "3",
               "TS_TOKEN_EXPIRATION_MIN": "99",  # not a ConfigManager field: ignored
               "TS_ALLOWED_URLS": "file://.*", "TS_BLACKLIST_ENV_VARS": "SECRET_.*"}
    cfg = load_config(config_file=path, environ=environ, workdir=tmp_path)
    assert cfg.token_expiration_min == 5.0 and cfg.job_queue_size == 3
    assert cfg.blacklist_env_vars == "SECRET_.*"
    assert cfg.allowed_urls == ("file://.*|http(s)?://.*",)  # not without use_env_allowed_urls
    write(path, "enable_envvars_config=true\nuse_env_allowed_urls=true\n")
    assert load_config(config_file=path, environ=environ,
                       workdir=tmp_path).allowed_urls == ("file://.*",)
    write(path, "job_queue_size=4\n")  # without enable_envvars_config nothing is taken
    assert load_config(config_file=path, environ=environ, workdir=tmp_path).job_queue_size == 4


def test_log_and_metrics_locations(tmp_path):
    cfg = load_config(environ={"LOG_LOCATION": "L", "METRICS_LOCATION": "/tmp/M"},
                      workdir=tmp_path)
    assert cfg.log_dir == tmp_path / "L" and cfg.metrics_dir == Path("/tmp/M")
    cfg = load_config(environ={}, workdir=tmp_path)
    assert cfg.log_dir == cfg.metrics_dir == tmp_path / "logs"


def test_load_models_all_in_any_case(tmp_path):
    for name in ("a.mar", "b.mar", "notes.txt"):
        (tmp_path / name).write_text("x")
    entries = startup_entries(("ALL",), tmp_path, lambda p: p.suffix == ".mar")
    assert entries == [(None, "a.mar"), (None, "b.mar")]
    assert startup_entries(("All",), tmp_path, lambda p: p.suffix == ".mar") == entries


def test_keys_dagserve_honours(tmp_path):
    path = write(tmp_path / "c.properties", "\n".join([
        "unregister_model_timeout=7", "limit_max_image_pixels=false",
        "default_service_handler=image_classifier", "enable_metrics_api=false",
        "disable_system_metrics=true", "metric_time_interval=5", "token_expiration_min=0.5",
        "blacklist_env_vars=AWS_.*|SECRET", 'model_snapshot={"models": {}}',
        "certificate_file=cert.pem", "private_key_file=key.pem"]) + "\n")
    cfg = load_config(config_file=path, environ={}, workdir=tmp_path)
    assert (cfg.unregister_model_timeout, cfg.limit_max_image_pixels,
            cfg.default_service_handler, cfg.enable_metrics_api, cfg.disable_system_metrics,
            cfg.metric_time_interval, cfg.token_expiration_min) == \
        (7, False, "image_classifier", False, True, 5, 0.5)
    assert cfg.model_snapshot == '{"models": {}}'
    assert cfg.certificate_file == tmp_path / "cert.pem"
    assert cfg.startup_warnings == ()
    env = worker_environment({"AWS_KEY": "1", "SECRET": "2", "SECRET_X": "3", "PATH": "/b"},
                             cfg.blacklist_env_vars)
    assert env == {"SECRET_X": "3", "PATH": "/b"}  # the regex must match the whole name
    write(path, "blacklist_env_vars=(\n")
    with pytest.raises(ConfigError, match="blacklist_env_vars is not a valid regular"):
        load_config(config_file=path, environ={}, workdir=tmp_path)


def test_one_warning_names_every_unsupported_key(tmp_path):
    path = write(tmp_path / "c.properties",
                 "keystore=ks.p12\nnumber_of_netty_threads=4\njob_queue_size=5\n"
                 "inferense_address=http://x:1\n")
    cfg = load_config(config_file=path, environ={}, workdir=tmp_path)
    assert len(cfg.startup_warnings) == 1
    warning = cfg.startup_warnings[0]
    for key in ("keystore: Java keystores", "number_of_netty_threads",
                "inferense_address (unknown)"):
        assert key in warning
    assert "job_queue_size" not in warning
    unsupported = [k for k, e in CONFIG_KEYS.items() if e.status == UNSUPPORTED]
    write(path, "".join(f"{k}=1\n" for k in unsupported))
    warning = load_config(config_file=path, environ={}, workdir=tmp_path).startup_warnings[0]
    assert all(k in warning for k in unsupported)
