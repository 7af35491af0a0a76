"""Proposed tests (for the lead to place under tests/): the hot path's framing, the batch
queue's held batches, and the scheduler's linear-chain detection. No server, no timing."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from pathlib import Path

import pytest

from dagserve.engine.scheduler import NodePlan, Plan
from dagserve.engine.workers import protocol
from dagserve.engine.workers.batch_queue import BatchQueue
from dagserve.engine.workers.connection import WorkerConnection
from dagserve.engine.workers.process import MAX_HELD, Job, WorkerProcess, WorkerSpec
from dagserve.engine.messages import Request, Response


def _frames(n: int, rng: random.Random) -> list[tuple[dict, bytes]]:
    out = []
    for i in range(n):
        body = rng.randbytes(rng.choice([0, 5, 100, 70_000, 200_000]))
        out.append(({"op": "x", "i": i, "pad": "p" * rng.choice([0, 10, 70_000])}, body))
    return out


def test_frame_reader_cuts_any_chunking_into_the_same_frames():
    rng = random.Random(1)
    frames = _frames(200, rng)
    a, b = socket.socketpair()

    def write() -> None:
        data = b"".join(protocol.pack(m, body) for m, body in frames)
        pos = 0
        while pos < len(data):
            n = rng.choice([1, 7, 100, 5000, 100_000])
            a.sendall(data[pos:pos + n])
            pos += n
        a.close()

    threading.Thread(target=write).start()
    reader = protocol.FrameReader(b, 1 << 16)
    got = []
    try:
        while True:
            meta, body = reader.read()
            got.append((meta, bytes(body)))
    except EOFError:
        pass
    b.close()
    assert got == frames


def test_worker_connection_cuts_any_chunking_into_the_same_frames():
    async def go() -> None:
        rng = random.Random(2)
        frames = _frames(100, rng)
        stream = b"".join(protocol.pack(m, body) for m, body in frames)
        for _ in range(20):
            got: list = []
            conn = WorkerConnection(lambda m, body: got.append((m, bytes(body))),
                                    lambda exc: got.append(("lost", exc)))
            pos = 0
            while pos < len(stream):
                n = rng.choice([1, 3, 8, 50, 1000, 65_536, 300_000])
                conn.data_received(stream[pos:pos + n])
                pos += n
            assert got == frames

    asyncio.run(go())


class FakeWorker:
    """What the queue sees of a WorkerProcess that holds at most one batch."""

    def __init__(self, queue: BatchQueue):
        self.queue = queue
        self.running: list[Job] = []
        self.held: list[Job] | None = None
        self.alive = True
        self.on_room = None
        self.on_unstarted = None
        self.sent: list[list[str]] = []

    @property
    def held_jobs(self) -> int:
        return len(self.held or [])

    def can_take_batch(self) -> bool:
        return not self.running or self.held is None

    def dispatch(self, jobs: list[Job]) -> None:
        if self.running:
            assert self.held is None
            self.held = jobs
        else:
            self.running = jobs
        self.sent.append([j.request.id for j in jobs])

    def finish(self) -> None:
        jobs, self.running, self.held = self.running, self.held or [], None
        for job in jobs:
            job.future.set_result(Response(job.request.id))
        if not self.running:
            self.queue.worker_ready(self)
        elif self.on_room is not None:
            self.on_room(self)

    def die(self) -> None:
        self.alive = False
        jobs, self.running = self.running, []
        unstarted, self.held = self.held, None
        for job in jobs:
            job.future.set_exception(RuntimeError("dead"))
        if unstarted:
            self.on_unstarted(self, unstarted)
        self.queue.worker_gone(self)


def test_busy_workers_hold_a_request_and_a_dead_one_hands_it_back():
    async def go() -> None:
        queue = BatchQueue("m", 1, 100)
        a, b = FakeWorker(queue), FakeWorker(queue)
        queue.worker_ready(a)
        queue.worker_ready(b)
        futures = [queue.submit(Request(str(i), [])) for i in range(6)]
        await asyncio.sleep(0)
        assert sorted(a.sent + b.sent) == [["0"], ["1"], ["2"], ["3"]]  # idle first, then held
        assert queue.pending == 2
        held = b.held[0].request.id
        b.die()
        await asyncio.sleep(0)
        assert queue.pending == 3
        a.finish()  # a runs what it held and takes the next: the one b never started
        assert a.sent[-1] == [held]
        while a.running:
            a.finish()
            await asyncio.sleep(0)
        results = [f.exception() is None for f in futures]
        assert results.count(True) == 5 and results.count(False) == 1

    asyncio.run(go())


def test_job_queue_size_counts_what_busy_workers_hold():
    """job_queue_size=2 with one worker: one running, exactly two waiting (one of them held
    by the worker, one in the queue); the next is refused."""
    from dagserve.engine.errors import ServiceUnavailableError

    async def go() -> None:
        queue = BatchQueue("m", 1, 2)
        w = FakeWorker(queue)
        queue.worker_ready(w)
        admitted = []
        for i in range(3):
            admitted.append(queue.submit(Request(str(i), [])))
            await asyncio.sleep(0)
        assert w.sent == [["0"], ["1"]] and queue.pending == 1
        with pytest.raises(ServiceUnavailableError):
            queue.submit(Request("3", []))
        w.finish()  # 1 starts, 2 is held: room for one more
        queue.submit(Request("4", []))

    asyncio.run(go())


def test_a_busy_worker_is_only_given_full_batches():
    async def go() -> None:
        queue = BatchQueue("m", 8, 100)
        w = FakeWorker(queue)
        queue.worker_ready(w)
        [queue.submit(Request(str(i), [])) for i in range(3)]
        await asyncio.sleep(0)
        [queue.submit(Request(str(i), [])) for i in range(3, 10)]
        await asyncio.sleep(0)
        assert w.sent == [["0", "1", "2"]] and queue.pending == 7  # partial: keeps gathering
        [queue.submit(Request(str(i), [])) for i in range(10, 15)]
        await asyncio.sleep(0)
        assert w.sent[-1] == [str(i) for i in range(3, 11)] and queue.pending == 4
        w.finish()
        assert len(w.sent) == 2  # runs what it held; the 4 wait for a free worker
        w.finish()
        assert w.sent[-1] == [str(i) for i in range(11, 15)]

    asyncio.run(go())


class _Conn:
    def send(self, frame: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_worker_holds_more_only_while_its_batches_are_quick_and_times_out_cleanly():
    async def go() -> None:
        loop = asyncio.get_running_loop()
        unstarted: list[Job] = []
        w = WorkerProcess(WorkerSpec("m", Path("/tmp"), "h", response_timeout=5),
                          sock_dir=Path("/tmp"), gpu_id=None, threads=1, log_file=None,
                          tasks=None, launcher=None,  # type: ignore[arg-type]  # never started
                          on_idle=lambda w: None, on_exit=lambda w, r: None)
        w._conn = _Conn()  # type: ignore[assignment]
        w.kill = lambda: None  # type: ignore[method-assign]
        w.on_unstarted = lambda w, jobs: unstarted.extend(jobs)

        def job(i: int) -> Job:
            return Job(Request(str(i), []), loop.create_future(), 0.0)

        def answer(slow: bool = False) -> None:
            if slow:
                w._started -= 0.05
            resps = [{"id": j.request.id, "code": 200, "len": 0} for j in w._inflight]
            w._on_frame({"op": "result", "resps": resps}, b"")

        w.dispatch([job(0)])
        w.dispatch([job(1)])
        assert not w.can_take_batch()  # nothing known about its speed: one held batch
        for i in range(30):  # quick batches
            answer()
            w.dispatch([job(i)])
        while w.can_take_batch():
            w.dispatch([job(99)])
        assert len(w._held) == MAX_HELD
        while w._inflight:  # slow batches
            answer(slow=True)
        w.dispatch([job(100)])
        w.dispatch([job(101)])
        assert not w.can_take_batch()
        running, held = w._inflight, list(w._held[0])
        w._on_timeout()
        assert running[0].future.exception().status == 504
        assert unstarted == []  # not yet: a result on its way would mean it started
        w._on_conn_lost(None)  # killed: its socket closed with nothing more in it
        assert unstarted == held and not held[0].future.done()

    asyncio.run(go())


def test_a_held_batch_the_worker_started_before_it_timed_out_never_runs_twice():
    """The timer race: the running batch times out just as its result is on the way, so the
    worker has already started the batch it held. That batch fails; it is not handed to
    another worker (where it would run a second time). Only a batch behind it is."""
    async def go() -> None:
        loop = asyncio.get_running_loop()
        unstarted: list[Job] = []
        gone: list[WorkerProcess] = []
        w = WorkerProcess(WorkerSpec("m", Path("/tmp"), "h", response_timeout=5),
                          sock_dir=Path("/tmp"), gpu_id=None, threads=1, log_file=None,
                          tasks=None, launcher=None,  # type: ignore[arg-type]  # never started
                          on_idle=lambda w: None, on_exit=lambda w, r: None)
        w._conn = _Conn()  # type: ignore[assignment]
        w.kill = lambda: None  # type: ignore[method-assign]
        w.on_unstarted = lambda w, jobs: unstarted.extend(jobs)
        w.on_gone = gone.append
        a, b = (Job(Request(i, []), loop.create_future(), 0.0) for i in "ab")
        w.dispatch([a])
        w.dispatch([b])
        w._on_timeout()
        assert a.future.exception().status == 504 and gone == [w]
        # the worker's result for a was already in the socket: it had started b
        w._on_frame({"op": "result", "resps": [{"id": "a", "code": 200, "len": 0}]}, b"")
        w._on_conn_lost(None)
        assert unstarted == []
        assert b.future.exception().status == 500

    asyncio.run(go())


def test_an_interrupted_batch_frees_the_worker_and_gives_back_what_is_still_wanted():
    async def go() -> None:
        loop = asyncio.get_running_loop()
        idle: list[WorkerProcess] = []
        requeued: list[Job] = []
        interrupts: list[int] = []
        w = WorkerProcess(WorkerSpec("m", Path("/tmp"), "h", response_timeout=5),
                          sock_dir=Path("/tmp"), gpu_id=None, threads=1, log_file=None,
                          tasks=None, launcher=None,  # type: ignore[arg-type]  # never started
                          on_idle=idle.append, on_exit=lambda w, r: None)
        w._conn = _Conn()  # type: ignore[assignment]
        w._interrupt = lambda: interrupts.append(w._batch_no)  # type: ignore[method-assign]
        w.on_requeue = requeued.extend
        a, b = (Job(Request(i, []), loop.create_future(), 0.0) for i in "ab")
        w.dispatch([a, b])
        a.future.cancel()
        w.abandon(a.future)
        assert interrupts == []  # b still waits for this batch
        b.future.cancel()
        w.abandon(b.future)
        assert interrupts == [1]
        w._on_frame({"op": "interrupted"}, b"")
        assert idle == [w] and requeued == [] and not w.busy
        # a batch held behind the running one whose jobs were all given up is interrupted
        # as soon as the worker starts it; one with a job still wanted is given back
        c, d = (Job(Request(i, []), loop.create_future(), 0.0) for i in "cd")
        w.dispatch([c])
        w.dispatch([d])
        d.future.cancel()
        w._on_frame({"op": "result", "resps": [{"id": "c", "code": 200, "len": 0}]}, b"")
        assert c.future.result().code == 200 and interrupts == [1, 3]
        e = Job(Request("e", []), loop.create_future(), 0.0)
        w._on_frame({"op": "interrupted"}, b"")
        w.dispatch([e])
        w._on_frame({"op": "interrupted"}, b"")  # e.g. the signal came late, during e
        assert requeued == [e] and not e.future.done()

    asyncio.run(go())


def test_linear_chains_are_recognised():
    def plan(edges: dict[str, list[str]]) -> Plan:
        names = list(dict.fromkeys([*edges, *(c for cs in edges.values() for c in cs)]))
        parents = {n: tuple(p for p, cs in edges.items() if n in cs) for n in names}
        start = next(n for n in names if not parents[n])
        leaves = tuple(n for n in names if not edges.get(n))
        return Plan(start, leaves, {n: NodePlan(n, parents[n], tuple(edges.get(n, ())), 1.0, 0)
                                    for n in names})

    assert [n.name for n in plan({"a": ["b"], "b": ["c"]}).chain] == ["a", "b", "c"]
    assert [n.name for n in plan({"a": []}).chain] == ["a"]
    assert plan({"a": ["b", "c"]}).chain is None
    assert plan({"a": ["b", "c"], "b": ["d"], "c": ["d"]}).chain is None


def test_max_batch_delay_fills_partial_batches_only_under_load():
    """Light load (the last batch was not full): a lone request leaves at once. Under load
    (the last batch left full): a partial batch waits for more, up to max_batch_delay, and
    leaves the moment it is full."""
    async def go() -> None:
        queue = BatchQueue("m", 4, 100, max_batch_delay_ms=200)
        w = FakeWorker(queue)
        queue.worker_ready(w)
        queue.submit(Request("light", []))
        await asyncio.sleep(0)
        assert w.sent == [["light"]]  # nothing waits at light load
        w.finish()
        for i in range(4):  # a full batch: load is high
            queue.submit(Request(f"f{i}", []))
        await asyncio.sleep(0)
        assert w.sent[-1] == ["f0", "f1", "f2", "f3"]
        w.finish()
        queue.submit(Request("p0", []))
        queue.submit(Request("p1", []))
        await asyncio.sleep(0.01)
        assert len(w.sent) == 2 and queue.pending == 2  # the idle worker waits for more
        queue.submit(Request("p2", []))
        queue.submit(Request("p3", []))
        await asyncio.sleep(0)
        assert w.sent[-1] == ["p0", "p1", "p2", "p3"]  # full: leaves at once
        w.finish()
        queue.submit(Request("t0", []))
        await asyncio.sleep(0.01)
        assert queue.pending == 1  # still under load: waiting to fill
        await asyncio.sleep(0.3)
        assert w.sent[-1] == ["t0"]  # ... but never past max_batch_delay
        w.finish()
        queue.submit(Request("after", []))
        await asyncio.sleep(0)
        assert w.sent[-1] == ["after"]  # the partial batch ended the busy spell

    asyncio.run(go())
