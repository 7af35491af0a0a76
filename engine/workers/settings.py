"""What the frontend tells a worker process: one typed structure from end to end.

The frontend builds a :class:`WorkerSettings` per worker (``WorkerSpec.settings_for``) and
passes it as JSON on the worker's command line; the worker reads it back with
:meth:`WorkerSettings.from_json`, which checks every field's type and refuses unknown keys,
and turns it into the handler service's own config. Nothing on either side parses a loose
dict.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

_REQUIRED = ("socket", "model_dir", "model_name")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    socket: str  # the frontend's Unix socket to connect to
    model_dir: str  # the unpacked archive (the worker's working directory)
    model_name: str
    handler: str | None = None  # None: the manifest's model.handler
    gpu_id: int | None = None  # None: CPU
    batch_size: int = 1
    threads: int = 0  # > 0: torch's intra-op threads (one inter-op thread)
    decode_input: bool = True
    limit_max_image_pixels: bool = True
    server_version: str = ""
    config_file: str | None = None  # model-config YAML, else the manifest's
    envelope: str | None = None  # service_envelope: a request envelope for every batch
    # a workflow's node group (engine/node_groups.py): node -> [its model name, its handler,
    # its model directory ("": this worker's model_dir)]
    group: dict[str, list[str]] | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "WorkerSettings":
        """Parse and check; ValueError names the first problem."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}")
        for key in _REQUIRED:
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"needs a non-empty string {key!r}")
        for name, value in data.items():
            _check_type(name, known[name].type, value)
        return cls(**data)

    def service_config(self):
        """The handler service's config (engine/handler/service.py)."""
        from ..handler.service import ServiceConfig

        return ServiceConfig(
            model_dir=Path(self.model_dir), model_name=self.model_name,
            handler=self.handler or None, gpu_id=self.gpu_id, batch_size=max(1, self.batch_size),
            decode_input=self.decode_input, limit_max_image_pixels=self.limit_max_image_pixels,
            server_version=self.server_version, config_file=self.config_file or None,
            envelope=self.envelope or None, group=self.group or None)


_TYPES = {"str": (str,), "int": (int,), "bool": (bool,), "dict": (dict,)}


def _check_type(name: str, annotation: Any, value: Any) -> None:
    text = str(annotation)
    optional = "None" in text
    base = text.split("|")[0].split("[")[0].strip()
    if value is None and optional:
        return
    allowed = _TYPES[base]
    if isinstance(value, bool) and base == "int" or not isinstance(value, allowed):
        raise ValueError(f"{name!r} must be {'null or ' if optional else ''}{base}, "
                         f"got {value!r}")
    if base != "dict":
        return
    if "list" in text:
        if not all(isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str)
                                                                      for x in v)
                   for k, v in value.items()):
            raise ValueError(f"{name!r} must map strings to lists of strings, got {value!r}")
    elif not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{name!r} must map strings to strings, got {value!r}")
