"""Error messages that never show the server's absolute paths.

Messages come from deep below (the unpacker names the archive file it read, a worker that
failed to load names its directory); before one goes to a client, the server's own
directories in it are replaced by short labels: ``<model_store>``, ``<workflow_store>``,
``<work_dir>`` (the private directory of unpacked models), ``<server>`` (the working,
log, temporary and installation directories).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Iterable

_END = r"(?=[/\s'\":;,)\]}]|$)"


class PathRedactor:
    def __init__(self, roots: Iterable[tuple[str, Path | str | None]]):
        pairs: dict[str, str] = {}
        for label, root in roots:
            if not root:
                continue
            for form in {str(root), str(Path(root).resolve())}:
                form = form.rstrip("/")
                if len(form) > 1 and form not in pairs:
                    pairs[form] = label
        ordered = sorted(pairs, key=len, reverse=True)  # the most specific first
        self._labels = pairs
        self._pattern = re.compile("|".join(re.escape(p) + _END for p in ordered)) \
            if ordered else None

    def __call__(self, message: str) -> str:
        if self._pattern is None or "/" not in message:
            return message
        return self._pattern.sub(lambda m: self._labels[m.group(0)], message)


def server_redactor(cfg, work_dir: Path | None) -> PathRedactor:
    """The redactor for a server with this config and private work directory."""
    import dagserve

    return PathRedactor([
        ("<work_dir>", work_dir), ("<model_store>", cfg.model_store),
        ("<workflow_store>", cfg.workflow_store), ("<server>", cfg.log_dir),
        ("<server>", cfg.workdir), ("<server>", tempfile.gettempdir()),
        ("<server>", Path(dagserve.__file__).parent.parent), ("<server>", sys.prefix),
        ("<server>", sys.base_prefix)])
