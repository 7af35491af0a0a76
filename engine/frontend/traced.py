"""The inference port's traced path, and the trace of a request that failed untraced.

``InferenceRoutes`` comes here only when a request asked to be traced (or every request is
exported to OpenTelemetry), so the common path stays as it was. Every answer of a traced or
failed request carries ``X-Dagserve-Trace-Id``; the trace is then served by the management
port.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web

from ..errors import DagserveError
from ..messages import Request, Response
from ..tracing import TRACE_ID_HEADER, Tracer
from .responses import error_response

Reply = Callable[[Response], web.Response]
Answer = Callable[[Any], Awaitable[web.StreamResponse]]  # a Response, or a ResultStream


def drop_query_flag(req: Request, query_string: str) -> None:
    """``?trace=true`` asks for a trace; it is not an input for the handler (query
    parameters are appended last, after the body or the form fields)."""
    if "trace" in query_string:
        for i in range(len(req.params) - 1, -1, -1):
            if req.params[i].name == "trace":
                del req.params[i]
                return


def error_reply(exc: DagserveError, trace_id: str) -> web.Response:
    resp = error_response(exc.status, exc.type_name or type(exc).__name__, exc.message)
    resp.headers[TRACE_ID_HEADER] = trace_id
    return resp


def failed_reply(tracer: Tracer, kind: str, target: str, request_id: str, started: float,
                 exc: DagserveError) -> web.Response:
    """An untraced request failed: keep a trace of what is known, answer with its id."""
    trace = tracer.failed(kind, target, request_id, started, exc.status, exc.message,
                          getattr(exc, "node", None))
    return error_reply(exc, trace.id)


def failed_answer(tracer: Tracer, model: str, request_id: str, started: float,
                  resp: Response, reply: Reply) -> web.Response:
    """An untraced prediction whose handler answered an error: kept like a failure."""
    trace = tracer.failed("model", model, request_id, started, resp.code,
                          resp.message or f"status {resp.code}", model)
    answer = reply(resp)
    answer.headers[TRACE_ID_HEADER] = trace.id
    return answer


async def traced_predict(tracer: Tracer, mv, req: Request, answer_with: Answer,
                         keep: bool = True) -> web.StreamResponse:
    """``/predictions`` of one model version as a trace with one node (the model);
    ``keep``: put it in the ring even if it succeeds. A streamed answer counts as ok when
    its first chunk is out."""
    trace = tracer.begin("model", mv.name, req, keep=keep)
    probe = trace.attempt(mv.name, mv, 1, req.params)
    status, error = 500, ""
    try:
        resp = await mv.queue.submit(req, probe)
        if resp.__class__ is Response:
            status = resp.code
            outcome = "ok" if status < 400 else ("timeout" if status == 504 else "error")
            error = "" if status < 400 else (resp.message or f"status {status}")
            probe.finish(outcome, status, error, len(resp.value), resp.handler_s)
        else:
            status = 200
            probe.finish("ok", 200, "streams its results")
        answer = await answer_with(resp)
    except DagserveError as exc:
        status, error = exc.status, exc.message
        if probe.ended is None:
            probe.finish("timeout" if status == 504 else "rejected", status, error)
        answer = error_reply(exc, trace.id)
    except BaseException:
        probe.finish("cancelled", 499, "the request ended first")
        raise
    finally:
        mv.stats.count(status, probe.ended - probe.started if probe.ended else 0.0)
        tracer.end(trace, status, error, mv.name if status >= 400 else None)
    answer.headers[TRACE_ID_HEADER] = trace.id
    return answer


async def traced_workflow(tracer: Tracer, name: str, req: Request,
                          run: Callable[..., Awaitable[Response]],
                          answer_with: Answer, keep: bool = True) -> web.StreamResponse:
    """``/wfpredict``: ``run(request, trace)`` runs the workflow, and the scheduler records
    each node attempt in the trace."""
    trace = tracer.begin("workflow", name, req, keep=keep)
    status, error, node = 500, "request cancelled", None
    try:
        resp = await run(req, trace)
        status, error = getattr(resp, "code", 200), ""  # a stream: ok once it started
        answer = await answer_with(resp)
    except DagserveError as exc:
        status, error, node = exc.status, exc.message, getattr(exc, "node", None)
        answer = error_reply(exc, trace.id)
    finally:
        tracer.end(trace, status, error, node)
    answer.headers[TRACE_ID_HEADER] = trace.id
    return answer
