"""Send one request to a model version's workers and count it in the model's statistics:
what the gRPC and Open Inference Protocol frontends share (the HTTP /predictions route
does the same inline, on its hot path)."""

from __future__ import annotations

import time

from ..messages import Request, Response
from ..workers.stream import ResultStream


async def submit_to_model(mv, request: Request) -> Response | ResultStream:
    """The model's response, or its ResultStream when the handler streams. Cancelling the
    caller cancels the job (the queue skips it; a stream is told to stop)."""
    mv.pool.check_can_serve()
    start = time.perf_counter()
    status = 500
    try:
        resp = await mv.queue.submit(request)
        status = 200 if resp.__class__ is ResultStream else resp.code
        return resp
    except BaseException as exc:
        status = getattr(exc, "status", 500)
        raise
    finally:
        mv.stats.count(status, time.perf_counter() - start)
