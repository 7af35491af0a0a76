"""A small HTTP/1.1 keep-alive load client over raw asyncio streams.

Each of N connections sends one request, reads the whole response (Content-Length, chunked,
or until close), and sends the next, so concurrency = connections. A run is bounded by a
request count AND a duration, whichever comes first; an optional warmup before it is sent
but not recorded. Every measured request's latency is taken with ``perf_counter_ns``.
A request is an error when its status is not 2xx or its connection failed; errors are
counted by kind. The client's own CPU time (``getrusage``) is reported so that a client
that saturated its core is visible in the results.

aiohttp's client costs several times more CPU per request than this loop; a Python client
still tops out around 10-15k req/s on one core, which is why ``benchmarks.wrk`` exists.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .stats import LoadResult, summarize_latencies

__all__ = ["HttpProtocolError", "LoadSpec", "Target", "read_response", "run_load",
           "run_load_async"]

_CONNECT_RETRY_S = 0.05
_MAX_HEAD = 64 * 1024


class HttpProtocolError(Exception):
    """The server sent something that is not a valid HTTP/1.x response."""


@dataclass(frozen=True)
class Target:
    """What every request of a run is: method, URL parts, body and headers."""

    host: str
    port: int
    path: str = "/"
    method: str = "POST"
    body: bytes = b""
    content_type: str | None = "application/octet-stream"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_url(cls, url: str, *, method: str = "POST", body: bytes = b"",
                 content_type: str | None = "application/octet-stream",
                 headers: tuple[tuple[str, str], ...] = ()) -> "Target":
        """A target from ``http://host:port/path?query`` (https is not supported)."""
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// URLs are supported, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"URL has no host: {url!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(host=parts.hostname, port=parts.port or 80, path=path, method=method.upper(),
                   body=body, content_type=content_type, headers=headers)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def request_bytes(self) -> bytes:
        """The exact bytes of one request (sent unchanged on every iteration)."""
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Connection: keep-alive"]
        if self.content_type and (self.body or self.method in ("POST", "PUT")):
            lines.append(f"Content-Type: {self.content_type}")
        if self.body or self.method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(self.body)}")
        lines.extend(f"{k}: {v}" for k, v in self.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(frozen=True)
class LoadSpec:
    """How hard and how long to push: connections, duration, request budget, warmup."""

    connections: int
    duration_s: float
    max_requests: int
    warmup_s: float = 0.0
    timeout_s: float = 30.0  # a request still unanswered this long at the end is an error

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError(f"connections must be >= 1, got {self.connections}")
        if self.duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {self.max_requests}")
        if self.warmup_s < 0:
            raise ValueError(f"warmup_s must be >= 0, got {self.warmup_s}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


async def read_response(reader: asyncio.StreamReader, *,
                        head_request: bool = False) -> tuple[int, bytes, bool]:
    """Read one response: ``(status, body, keep_alive)``.

    Handles Content-Length, ``Transfer-Encoding: chunked`` (trailers skipped) and bodies
    delimited by the connection closing."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpProtocolError("response head larger than the stream limit") from None
    lines = head[:-4].split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise HttpProtocolError(f"bad status line: {lines[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise HttpProtocolError(f"bad status code in {lines[0][:80]!r}") from None
    keep_alive = status_line[0] != b"HTTP/1.0"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise HttpProtocolError(f"bad header line: {line[:80]!r}")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise HttpProtocolError(f"bad Content-Length: {value[:40]!r}") from None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            token = value.strip().lower()
            if token == b"close":
                keep_alive = False
            elif token == b"keep-alive":
                keep_alive = True
    if head_request or status in (204, 304) or 100 <= status < 200:
        return status, b"", keep_alive
    if chunked:
        return status, await _read_chunked(reader), keep_alive
    if length is not None:
        return status, await reader.readexactly(length), keep_alive
    return status, await reader.read(), False  # delimited by close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpProtocolError(f"bad chunk size line: {size_line[:40]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise HttpProtocolError("chunk not terminated by CRLF")
        parts.append(chunk[:-2])


@dataclass
class _RunState:
    """Shared by the connection tasks of one run."""

    request: bytes
    head_request: bool
    large_body: bool
    measure_from_ns: int
    tickets: int
    latencies_ns: list[int] = field(default_factory=list)
    error_kinds: Counter = field(default_factory=Counter)
    unanswered: int = 0
    inflight_since: dict[int, int] = field(default_factory=dict)
    stop: bool = False


async def _connection(index: int, target: Target, state: _RunState) -> None:
    """One keep-alive connection: request, full response, repeat; reconnect on failure."""
    perf = time.perf_counter_ns
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while not state.stop:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(target.host, target.port,
                                                                   limit=_MAX_HEAD)
                except OSError as exc:
                    if perf() >= state.measure_from_ns:
                        state.error_kinds[f"connect: {type(exc).__name__}"] += 1
                        state.unanswered += 1
                    await asyncio.sleep(_CONNECT_RETRY_S)
                    continue
            started = perf()
            measured = started >= state.measure_from_ns
            if measured:
                if state.tickets <= 0:
                    return
                state.tickets -= 1
            state.inflight_since[index] = started
            try:
                writer.write(state.request)
                if state.large_body:
                    await writer.drain()
                status, _body, keep_alive = await read_response(
                    reader, head_request=state.head_request)
            except (OSError, asyncio.IncompleteReadError, HttpProtocolError) as exc:
                state.inflight_since.pop(index, None)
                if measured:
                    state.error_kinds[f"connection: {type(exc).__name__}"] += 1
                    state.unanswered += 1
                writer.close()
                writer = None
                continue
            done = perf()
            del state.inflight_since[index]
            if measured:
                state.latencies_ns.append(done - started)
                if not 200 <= status < 300:
                    state.error_kinds[f"status {status}"] += 1
            if not keep_alive:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


async def run_load_async(target: Target, spec: LoadSpec) -> LoadResult:
    """Run the load on the current event loop and summarize it."""
    loop = asyncio.get_running_loop()
    start_ns = time.perf_counter_ns()
    state = _RunState(request=target.request_bytes(), head_request=target.method == "HEAD",
                      large_body=len(target.body) > 16 * 1024,
                      measure_from_ns=start_ns + int(spec.warmup_s * 1e9),
                      tickets=spec.max_requests)
    tasks = [loop.create_task(_connection(i, target, state)) for i in range(spec.connections)]
    if spec.warmup_s > 0:
        await asyncio.sleep(spec.warmup_s)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    measure_start = time.perf_counter_ns()
    _done, pending = await asyncio.wait(tasks, timeout=spec.duration_s)
    measure_end = time.perf_counter_ns()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    state.stop = True
    for since in list(state.inflight_since.values()):
        # Unanswered at the end: an error when it waited through the whole measured window
        # (even if sent during the warmup) or longer than the timeout; else just cut off.
        if since <= measure_start:
            state.error_kinds["no answer during the whole run"] += 1
            state.unanswered += 1
        elif measure_end - since >= spec.timeout_s * 1e9:
            state.error_kinds["timeout"] += 1
            state.unanswered += 1
    for task in pending:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
    if failures:
        raise failures[0]
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    errors = sum(state.error_kinds.values())
    return summarize_latencies(
        "python", spec.connections, state.latencies_ns, errors, dict(state.error_kinds),
        (measure_end - measure_start) / 1e9, cpu, unanswered=state.unanswered)


def run_load(target: Target, spec: LoadSpec, *, use_uvloop: bool = True) -> LoadResult:
    """Run the load in a fresh event loop (uvloop when installed and wanted)."""
    factory = None
    if use_uvloop:
        try:
            import uvloop
            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_load_async(target, spec))
