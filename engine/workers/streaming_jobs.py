"""The frontend side of streamed results, mixed into ``WorkerProcess``: a ``partial``
frame resolves a job's future to a :class:`ResultStream` (its first chunk) and feeds it;
a stream whose client went away is reported to the worker (``cancel``), and a batch that
nobody waits for any more is interrupted at once."""

from __future__ import annotations

from . import protocol
from .spec import Job
from .stream import ResultStream


class StreamingJobs:
    """Uses WorkerProcess's ``_inflight``, ``_timer``, ``_started``, ``_start_batch``,
    ``_conn``, ``_dead``, ``_grace``, ``_timed_out`` and ``_interrupt``."""

    def _on_partial(self, meta: dict, body: bytes) -> None:
        """Intermediate results of the running batch: the first one of a job resolves its
        future to a ResultStream; the response timeout starts again (the handler is alive)."""
        if not self._inflight:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._start_batch(self._started)
        jobs = {job.request.id: job for job in self._inflight}
        gone = []
        for resp in protocol.decode_result(meta, body):
            job = jobs.get(resp.id)
            if job is None:
                continue
            if job.stream is None:
                if job.future.done():  # cancelled while it ran (a workflow node timeout)
                    gone.append(resp.id)
                    continue
                job.stream = ResultStream(resp.id, self)
                job.future.set_result(job.stream)
            job.stream.push(resp)
        if gone:
            self.cancel_requests(gone)

    def cancel_requests(self, request_ids: list[str]) -> None:
        """These requests' clients are gone: the worker stops streaming to them (at its
        next send), and the batch is interrupted at once when nobody else waits for it."""
        if self._conn is not None and not self._dead:
            try:
                self._conn.send(protocol.encode_cancel(request_ids))
            except ConnectionError:
                return
            self._interrupt_if_unwanted()

    def _interrupt_if_unwanted(self) -> None:
        """Interrupt the running batch when none of its requests is waited for (a streamed
        request is waited for until its client goes away)."""
        if self._grace is None and not self._dead and not self._timed_out and \
                self._inflight and not any(wanted(job) for job in self._inflight):
            self._interrupt()


def wanted(job: Job) -> bool:
    """Someone still waits for this job's result (or for the rest of its stream)."""
    if job.stream is not None:
        return job.stream.wanted
    return not job.future.done()
