"""One request through a workflow without a server: the authoring loop of ``dagserve run``.

The same pieces as the server (model manager, workflow manager, scheduler, worker
processes), without HTTP: the workflow is registered from its .war (a YAML spec is packed
into a temporary .war first, with its handler file), one traced request runs through it,
and every worker is stopped before returning. Worker output goes to a log file in the
scratch directory; its tail is returned when registration fails, as the reason is there.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dagserve.archiver.pack import pack_workflow

from .config import Config
from .errors import BadRequestError, DagserveError
from .frontend.middleware import new_request_id
from .messages import Param, Request, Response
from .models import ModelManager
from .registry import Registry
from .tracing import Trace, Tracer
from .workers.pool import DeviceAllocator, visible_gpu_count
from .workflow_manager import WorkflowManager

EMPTY_HANDLER = '"""No function nodes."""\n'


@dataclass
class LocalResult:
    response: Response | None  # None when the request failed
    error: DagserveError | None
    trace: Trace | None
    worker_log: str  # the workers' output (load progress, tracebacks)


def war_for(source: Path, handler: Path | None, scratch: Path) -> Path:
    """``source`` itself if it is a .war, else a .war packed from the YAML spec and
    ``handler`` (an empty handler when the spec has no function nodes)."""
    if source.suffix == ".war" or source.is_dir():
        return source
    if handler is None:
        handler = scratch / "no_functions.py"
        handler.write_text(EMPTY_HANDLER)
    from dagserve.archiver import ArchiveError
    from dagserve.workflows import SpecError, validate_spec_file

    try:
        return pack_workflow(workflow_name=source.stem, spec_file=str(source),
                             handler=str(handler), extra_files=None, export_path=scratch,
                             force=True, validate_spec=validate_spec_file)
    except SpecError as exc:
        raise BadRequestError(f"Invalid workflow specification: {exc}") from None
    except ArchiveError as exc:
        raise BadRequestError(f"Cannot pack {source.name}: {exc}") from None


async def run_once(source: Path, model_store: Path, body: bytes, content_type: str | None,
                   *, handler: Path | None = None, cfg: Config | None = None) -> LocalResult:
    scratch = Path(tempfile.mkdtemp(prefix="dagserve-run-"))
    log_path = scratch / "workers.log"
    cfg = (cfg or Config()).with_(model_store=model_store.resolve(),
                                  workflow_store=scratch, log_dir=scratch,
                                  disable_token_authorization=True, snapshots=False)
    registry = Registry()
    trace = None
    with log_path.open("w") as worker_log:
        models = ModelManager(cfg, registry, work_dir=scratch / "work",
                              devices=DeviceAllocator(visible_gpu_count(cfg.number_of_gpu)),
                              model_log=worker_log)
        workflows = WorkflowManager(cfg, registry, models)
        try:
            war = war_for(source.resolve(), handler, scratch)
            entry = await workflows.register(war.as_uri())
            headers = {"Content-Type": content_type} if content_type else {}
            request = Request(new_request_id(), [Param("body", content_type, body)], headers)
            tracer = Tracer(1)
            trace = tracer.begin("workflow", entry.name, request)
            try:
                response = await workflows.run(entry.name, request, trace)
            except DagserveError as exc:
                tracer.end(trace, exc.status, exc.message, getattr(exc, "node", None))
                return LocalResult(None, exc, trace, _read(log_path))
            tracer.end(trace, response.code)
            return LocalResult(response, None, trace, _read(log_path))
        except DagserveError as exc:
            return LocalResult(None, exc, trace, _read(log_path))
        finally:
            await models.close_all()
            shutil.rmtree(scratch, ignore_errors=True)


def _read(path: Path, limit: int = 20_000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def run(source: Path, model_store: Path, body: bytes, content_type: str | None,
        handler: Path | None = None) -> LocalResult:
    return asyncio.run(run_once(source, model_store, body, content_type, handler=handler))
