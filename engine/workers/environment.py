"""The environment a worker process starts with: the server's, less the variables that
``blacklist_env_vars`` (a regex, TorchServe's key) matches in full."""

from __future__ import annotations

import re
from typing import Mapping


def worker_environment(environ: Mapping[str, str], blacklist: str | None) -> dict[str, str]:
    if not blacklist:
        return dict(environ)
    pattern = re.compile(blacklist)
    return {k: v for k, v in environ.items() if not pattern.fullmatch(k)}
