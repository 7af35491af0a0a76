"""The actor side of a Ray worker: one model version loaded inside a Ray actor.

The model directory arrives as a zip (put in Ray's object store once per model version by
the frontend) and is unpacked with dagserve's safe unpacker into a private directory on
the node where the actor runs: no shared file system is assumed. The handler is then
loaded by the same service a local worker uses (``handler/service.py``), so handlers,
batching and errors are the same.

Each ``predict`` call carries a whole batch as one ``predict`` frame and returns one
``result`` frame (``protocol.py``): one Ray call per batch, never per request, and only
bytes cross the pickle boundary.

``watch`` never returns while the actor lives; it runs in its own concurrency group so the
frontend learns of the actor's death (or its node's) at once, even when it is idle.

This module imports Ray: only Ray workers import it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import traceback
import zipfile
from pathlib import Path
from typing import Any

import ray

from . import protocol
from .main import _limit_threads_after_load, _limit_threads_before_load, _one_line
from .settings import WorkerSettings


@ray.remote(concurrency_groups={"watch": 2})
class ModelActor:
    def __init__(self, model_zip: bytes, settings: WorkerSettings) -> None:
        self._closed = threading.Event()
        self._dir: Path | None = None
        self._service = None
        self._error = ""
        try:
            self._load(model_zip, settings)
        except BaseException as exc:  # noqa: BLE001 - reported by ready(), then killed
            traceback.print_exc(file=sys.stderr)
            self._error = _one_line(exc)

    def _load(self, model_zip: bytes, settings: WorkerSettings) -> None:
        from dagserve.archiver import unpack

        from ..handler import ts_alias
        from ..handler.service import load_service

        scratch = Path(tempfile.mkdtemp(prefix="dagserve-ray-"))
        self._dir = scratch
        archive = scratch / "model.zip"
        archive.write_bytes(model_zip)
        # the frontend's own stored zip of what it accepted: limits sized to it, not the
        # defaults for archives from outside (a model may be larger, or hold more files)
        with zipfile.ZipFile(archive) as zf:
            files = len(zf.infolist())
        model_dir = unpack(archive, scratch / "model", max_total_bytes=max(1, len(model_zip)),
                           max_files=max(1, files))
        archive.unlink()
        sys.path.insert(0, str(model_dir))
        os.chdir(model_dir)  # as a local worker, which starts in its model directory
        print(f"ray worker {os.getpid()}: loading model {settings.model_name}",
              file=sys.stderr)
        _limit_threads_before_load(settings.threads)
        ts_alias.install()
        settings = dataclasses.replace(settings, model_dir=str(model_dir))
        self._service = load_service(settings.service_config())
        _limit_threads_after_load(settings.threads)

    def ready(self) -> dict[str, Any]:
        """``{"ok": True, "pid", "node_id"}`` once loaded, else ``{"ok": False, "message"}``."""
        if self._service is None:
            return {"ok": False, "message": self._error or "the model did not load"}
        return {"ok": True, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def predict(self, frame: bytes) -> bytes:
        """One batch: a ``predict`` frame in, a ``result`` frame out."""
        meta, body = protocol.split_frame(frame)
        responses, metrics = self._service.predict(protocol.decode_predict(meta, body))
        return protocol.encode_result(responses, metrics)

    @ray.method(concurrency_group="watch")
    def watch(self) -> None:
        """Returns only when the actor is closed; fails when it dies."""
        self._closed.wait()

    @ray.method(concurrency_group="watch")
    def close(self) -> None:
        """Remove the unpacked model; the frontend kills the actor next."""
        self._closed.set()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
