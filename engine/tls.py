"""TLS for the HTTP ports: an ``https://`` address is served with ``certificate_file`` and
``private_key_file`` (PEM), as TorchServe serves it; never silently as plain HTTP. Java
keystores (``keystore*`` keys) cannot be read, so an https address with only a keystore is
refused at start with what to give instead."""

from __future__ import annotations

import ssl
from pathlib import Path

from .config import Config
from .errors import ConfigError

ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")


def is_https(address: str) -> bool:
    return address.strip().lower().startswith("https://")


def https_addresses(cfg: Config) -> list[str]:
    return [key for key in ADDRESS_KEYS if is_https(getattr(cfg, key))]


def server_ssl_context(cfg: Config) -> ssl.SSLContext | None:
    """The context the https ports share; None when every address is plain http.
    Raises ConfigError when an https address cannot be served over TLS."""
    keys = https_addresses(cfg)
    if not keys:
        return None
    if cfg.certificate_file is None or cfg.private_key_file is None:
        raise ConfigError(
            f"{', '.join(keys)} use https:// but certificate_file and private_key_file are "
            f"not both set (PEM files; Java keystores are not supported)")
    for label, path in (("certificate_file", cfg.certificate_file),
                        ("private_key_file", cfg.private_key_file)):
        if not Path(path).is_file():
            raise ConfigError(f"{label} not found: {path}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cfg.certificate_file), str(cfg.private_key_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load certificate_file {cfg.certificate_file} with "
                          f"private_key_file {cfg.private_key_file}: {exc}") from None
    return context


def context_for(address: str, context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The SSL context one listener gets: the shared one for an https address."""
    return context if is_https(address) else None
