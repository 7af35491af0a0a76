"""Config snapshots: what is registered, written to ``logs/config/<timestamp>-<kind>.cfg``
after every change, and restored at the next start (unless ``--ncs``).

The file is TorchServe's: a Java properties file holding the server's configuration plus
``model_snapshot``, pretty-printed JSON::

    {"name": "20240501101112345-snapshot.cfg", "modelCount": 2, "created": <ms>,
     "models": {"<name>": {"<version>": {"defaultVersion": true, "marName": "x.mar",
                "minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 100,
                "responseTimeout": 120, ...}}}}

dagserve adds ``startupTimeout`` (and ``handler`` when the registration overrode the
archive's) to each model, and a ``workflow_snapshot`` key with the workflow manager's entries.
``marName`` is the url the model was registered with (a file name in the model store, or a
``file://`` / ``http(s)://`` url), so a restore registers the same archive again.

Each file is written to a temporary name, fsynced and renamed, so a crash right after a
change still finds a complete snapshot; changes made in one event-loop tick share one write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import Config
from .errors import DagserveError
from .files import write_atomically
from .models import ModelManager, ModelOptions
from .properties import format_properties, parse_properties
from .registry import ModelVersion, Registry
from .workflow_manager import WorkflowManager

log = logging.getLogger("dagserve.snapshot")

KINDS = ("startup", "snapshot", "shutdown")
FILE_NAME = re.compile(r"^(\d{17})-(startup|snapshot|shutdown)\.cfg$")
MODEL_KEY = "model_snapshot"
WORKFLOW_KEY = "workflow_snapshot"


# -- the snapshot manager -----------------------------------------------------------------

class SnapshotManager:
    """Writes what ``registry`` holds; restores it through the model and workflow managers.
    After :meth:`close` (the shutdown snapshot is written) nothing is written any more."""

    def __init__(self, cfg: Config, registry: Registry):
        self.cfg = cfg
        self.registry = registry
        self.dir = Path(cfg.log_dir) / "config"
        self._scheduled = False
        self._restoring = False
        self._closed = False
        self._last_ms = 0
        self._base = self._base_properties()

    def close(self) -> None:
        self._closed = True
        self._scheduled = False

    # -- writing -------------------------------------------------------------------------

    def changed(self) -> None:
        """Something was registered, scaled or unregistered: write a ``snapshot`` once the
        current event-loop tick is over (several changes in one tick share one write)."""
        if self._restoring or self._scheduled or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.write("snapshot")
            return
        self._scheduled = True
        loop.call_soon(self._flush)

    def flush(self) -> None:
        """Write the snapshot a change scheduled, now (the management API calls this before
        it answers, so a client that saw the answer can rely on the snapshot)."""
        if not self._scheduled:
            return
        self._scheduled = False
        if not self._restoring:
            self.write("snapshot")

    _flush = flush

    def write(self, kind: str) -> Path | None:
        """Write a ``<timestamp>-<kind>.cfg`` now; its path, or None when it could not be
        written (logged: a full disk must not take the server down)."""
        if kind not in KINDS:
            raise ValueError(f"snapshot kind must be one of {KINDS}, got {kind!r}")
        if self._closed:
            log.warning("snapshot %s not written: the server has stopped", kind)
            return None
        now_ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._last_ms = now_ms
        stamp = datetime.fromtimestamp(now_ms / 1000)
        name = stamp.strftime("%Y%m%d%H%M%S") + f"{now_ms % 1000:03d}-{kind}.cfg"
        props = dict(self._base)
        props[MODEL_KEY] = json.dumps(self._model_snapshot(name, now_ms), indent=2)
        props[WORKFLOW_KEY] = json.dumps(workflow_entries(self.registry), indent=2)
        try:
            path = self._write_atomically(name, format_properties(props, "Saving snapshot"))
        except OSError as exc:
            log.error("could not write snapshot %s: %s", name, exc)
            return None
        log.debug("wrote snapshot %s", path)
        return path

    def _write_atomically(self, name: str, text: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / name
        write_atomically(final, text.encode("utf-8"))
        return final

    def _base_properties(self) -> dict[str, str]:
        """The configuration part of the file: the config file's keys, then the addresses
        and stores the server really uses."""
        cfg = self.cfg
        props: dict[str, str] = {}
        if cfg.config_file is not None:
            try:
                props.update(parse_properties(Path(cfg.config_file).read_text()))
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("could not read %s for the snapshots: %s", cfg.config_file, exc)
            props["tsConfigFile"] = str(cfg.config_file)
        props.pop(MODEL_KEY, None)
        props.pop(WORKFLOW_KEY, None)
        props["inference_address"] = cfg.inference_address
        props["management_address"] = cfg.management_address
        props["metrics_address"] = cfg.metrics_address
        if cfg.model_store is not None:
            props["model_store"] = str(cfg.model_store)
        if cfg.workflow_store is not None:
            props["workflow_store"] = str(cfg.workflow_store)
        return props

    def _model_snapshot(self, name: str, created_ms: int) -> dict[str, Any]:
        registry = self.registry
        models: dict[str, dict[str, Any]] = {}
        count = 0
        for model_name in registry.names():
            default = registry.default_version(model_name)
            for mv in registry.versions(model_name):
                if mv.owner is not None:
                    continue  # a workflow's node: restored with its workflow
                models.setdefault(model_name, {})[mv.version] = self._model_state(
                    mv, mv.version == default)
                count += 1
        return {"name": name, "modelCount": count, "created": created_ms, "models": models}

    @staticmethod
    def _model_state(mv: ModelVersion, is_default: bool) -> dict[str, Any]:
        state: dict[str, Any] = {
            "defaultVersion": is_default, "marName": mv.url,
            "minWorkers": mv.min_workers, "maxWorkers": mv.max_workers,
            "batchSize": mv.batch_size, "maxBatchDelay": mv.max_batch_delay,
            "responseTimeout": mv.response_timeout, "startupTimeout": mv.startup_timeout,
            "runtimeType": mv.runtime}
        manifest_handler = ((mv.manifest or {}).get("model") or {}).get("handler")
        if mv.handler and mv.handler != manifest_handler:
            state["handler"] = mv.handler
        if mv.ray:
            state["ray"] = mv.ray  # the registration's Ray placement
        return state

    # -- restoring -----------------------------------------------------------------------

    def latest(self) -> Path | None:
        """The newest snapshot file in ``logs/config`` (by the timestamp in its name)."""
        try:
            entries = list(self.dir.iterdir())
        except OSError:
            return None
        found = [(m.group(1), p.stat().st_mtime, p) for p in entries
                 if (m := FILE_NAME.match(p.name)) and p.is_file()]
        return max(found)[2] if found else None

    async def restore_latest(self, models: ModelManager, workflows: WorkflowManager) -> bool:
        """Register again what the newest snapshot holds: models (versions, workers, batch
        settings, default versions), then workflows. True when something was restored."""
        path = self.latest()
        if path is None:
            return False
        try:
            props = parse_properties(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            log.error("could not read snapshot %s: %s", path, exc)
            return False
        log.info("restoring from snapshot %s", path.name)
        saved = _json_value(props.get(MODEL_KEY), path, MODEL_KEY, dict) or {}
        saved_workflows = _json_value(props.get(WORKFLOW_KEY), path, WORKFLOW_KEY, list) or []
        self._restoring = True
        try:
            restored = await self._restore_models(models, saved.get("models") or {})
            if saved_workflows:
                before = len(self.registry.workflows)
                try:
                    await workflows.restore(saved_workflows)
                except Exception:  # the models restored above must still be served
                    log.exception("restoring the workflows of %s failed", path.name)
                restored += len(self.registry.workflows) - before
        finally:
            self._restoring = False
        return restored > 0

    async def restore_text(self, model_snapshot: str, models: ModelManager) -> bool:
        """The ``model_snapshot`` JSON of config.properties (TorchServe restores it instead
        of loading ``load_models``); config.py has checked that it is a JSON object."""
        log.info("restoring the model_snapshot of config.properties")
        saved = json.loads(model_snapshot)
        self._restoring = True
        try:
            restored = await self._restore_models(models, saved.get("models") or {})
        finally:
            self._restoring = False
        return restored > 0

    async def _restore_models(self, manager: ModelManager, models: Any) -> int:
        if not isinstance(models, dict):
            log.error("model_snapshot.models is not an object; no model restored")
            return 0
        jobs = []
        for name, versions in models.items():
            if not isinstance(versions, dict):
                log.error("snapshot entry of model %s is not an object; skipped", name)
                continue
            for version, state in versions.items():
                jobs.append((name, version, state))
        results = await asyncio.gather(*(self._restore_model(manager, *job) for job in jobs),
                                       return_exceptions=True)
        restored = 0
        for (name, version, state), result in zip(jobs, results):
            if isinstance(result, BaseException):
                message = getattr(result, "message", None) or repr(result)
                log.error("could not restore model %s version %s: %s", name, version, message)
                continue
            restored += 1
            if isinstance(state, dict) and state.get("defaultVersion") is True:
                try:
                    self.registry.set_default(name, result.version)
                except DagserveError:
                    pass
        return restored

    async def _restore_model(self, manager: ModelManager, name: str, version: str,
                             state: Any) -> ModelVersion:
        if not isinstance(state, dict):
            raise ValueError("its entry is not an object")
        url = state.get("marName")
        if not isinstance(url, str) or not url:
            raise ValueError("its entry has no marName")
        handler = state.get("handler")
        opts = ModelOptions(
            model_name=name,
            handler=handler if isinstance(handler, str) and handler else None,
            batch_size=_int_or_none(state, "batchSize"),
            max_batch_delay=_int_or_none(state, "maxBatchDelay"),
            initial_workers=_int_or_none(state, "minWorkers"),
            max_workers=_int_or_none(state, "maxWorkers"),
            response_timeout=_int_or_none(state, "responseTimeout"),
            startup_timeout=_int_or_none(state, "startupTimeout"),
            ray=state["ray"] if isinstance(state.get("ray"), dict) else None)
        mv = await manager.register(url, opts, synchronous=True)
        if mv.version != version:
            log.warning("snapshot had version %s of model %s, but %s now holds version %s",
                        version, name, url, mv.version)
        return mv


def workflow_entries(registry: Registry) -> list[dict]:
    """What a restore needs of each registered workflow version: its url, version, whether it
    is the default, the registered models its ``model:`` nodes share (restored before it, as
    models come first), and its nodes' workers."""
    return [{"name": e.name, "url": e.url, "version": e.version,
             "default": registry.workflows.get(e.name) is e,
             "sharedModels": {node: f"{mv.name}/{mv.version}" for node, mv in e.shared.items()},
             "nodes": {node: {"minWorkers": mv.min_workers, "maxWorkers": mv.max_workers}
                       for node, mv in e.node_models.items()}}
            for e in registry.all_workflow_versions()]


def _int_or_none(state: dict, key: str) -> int | None:
    value = state.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{key} is not a number: {value!r}")
    return int(value)


def _json_value(text: str | None, path: Path, key: str, kind: type) -> Any:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        log.error("snapshot %s: %s is not valid JSON (%s); ignored", path.name, key, exc)
        return None
    if not isinstance(value, kind):
        log.error("snapshot %s: %s is not a JSON %s; ignored", path.name, key,
                  "object" if kind is dict else "array")
        return None
    return value
