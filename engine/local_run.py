"""One request through a workflow without a server: the authoring loop of ``dagserve run``.

The server's own :class:`~.runtime.Runtime` (model and workflow managers, scheduler, worker
processes) without the HTTP frontends: the workflow is registered from its .war (a YAML spec
is packed into a temporary .war first, with its handler file), one traced request runs
through it, and the runtime is stopped (every worker with it) before returning. Logs go to
a scratch directory; the workers' output is returned (the reason a registration failed is
there).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio

from dagserve.archiver.pack import pack_workflow

from .config import Config
from .errors import BadRequestError, DagserveError
from .frontend.middleware import new_request_id
from .logs import MODEL_LOG
from .messages import Param, Request, Response
from .runtime import Runtime
from .tasks import TaskOwner
from .tracing import Trace, Tracer

EMPTY_HANDLER = '"""No function nodes."""\n'


@dataclass
class LocalResult:
    response: Response | None  # None when the request failed
    error: DagserveError | None
    trace: Trace | None
    worker_log: str  # the workers' output (load progress, tracebacks)


def war_for(source: Path, handler: Path | None, scratch: Path,
            extra_files: str | None = None) -> Path:
    """``source`` itself if it is a .war, else a .war packed from the YAML spec,
    ``handler`` (an empty handler when the spec has no function nodes) and ``extra_files``
    (comma-separated, as workflow-archiver takes them)."""
    if source.suffix == ".war" or source.is_dir():
        return source
    if handler is None:
        handler = scratch / "no_functions.py"
        handler.write_text(EMPTY_HANDLER)
    from dagserve.archiver import ArchiveError
    from dagserve.workflows import SpecError, validate_spec_file

    try:
        return pack_workflow(workflow_name=source.stem, spec_file=str(source),
                             handler=str(handler), extra_files=extra_files,
                             export_path=scratch,
                             force=True, validate_spec=validate_spec_file)
    except SpecError as exc:
        raise BadRequestError(f"Invalid workflow specification: {exc}") from None
    except ArchiveError as exc:
        raise BadRequestError(f"Cannot pack {source.name}: {exc}") from None


async def _run_in(runtime: Runtime, war_source: tuple, scratch: Path, body: bytes,
                  content_type: str | None) -> tuple[Response | None, DagserveError | None,
                                                     Trace | None]:
    trace = None
    try:
        source, handler, extra_files = war_source
        war = war_for(source.resolve(), handler, scratch, extra_files)
        entry = await runtime.workflows.register(war.as_uri())
        headers = {"Content-Type": content_type} if content_type else {}
        request = Request(new_request_id(), [Param("body", content_type, body)], headers)
        tracer = Tracer(1)
        trace = tracer.begin("workflow", entry.name, request)
        try:
            response = await runtime.workflows.run(entry.name, request, entry.version, trace)
        except DagserveError as exc:
            tracer.end(trace, exc.status, exc.message, getattr(exc, "node", None))
            return None, exc, trace
        tracer.end(trace, response.code)
        return response, None, trace
    except DagserveError as exc:
        return None, exc, trace


async def run_once(source: Path, model_store: Path, body: bytes, content_type: str | None,
                   *, handler: Path | None = None, extra_files: str | None = None,
                   cfg: Config | None = None) -> LocalResult:
    scratch = Path(tempfile.mkdtemp(prefix="dagserve-run-"))
    cfg = (cfg or Config()).with_(model_store=model_store.resolve(), workflow_store=scratch,
                                  log_dir=scratch / "logs", workdir=scratch,
                                  disable_token_authorization=True, snapshots=False,
                                  otel_exporter_otlp_endpoint=None)
    try:
        async with anyio.create_task_group() as group:
            runtime = Runtime.build(cfg, TaskOwner(group))
            try:
                response, error, trace = await _run_in(
                    runtime, (source, handler, extra_files), scratch, body, content_type)
            finally:
                with anyio.CancelScope(shield=True):
                    await runtime.stop()
        return LocalResult(response, error, trace, _read(cfg.log_dir / MODEL_LOG))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _read(path: Path, limit: int = 20_000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def run(source: Path, model_store: Path, body: bytes, content_type: str | None,
        handler: Path | None = None, extra_files: str | None = None) -> LocalResult:
    return anyio.run(partial(run_once, source, model_store, body, content_type,
                             handler=handler, extra_files=extra_files))
