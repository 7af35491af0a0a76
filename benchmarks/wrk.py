"""Run ``wrk`` (when it is on PATH) for the same load a ``LoadSpec`` describes.

wrk is a C client that costs far less CPU per request than any Python client, so on this
2-core machine it takes less from the server it measures. A Lua script sets the method, body
and headers; latency percentiles come from its ``--latency`` report.

A wrk run is bounded by duration only: a Lua ``response()`` hook could stop a thread after a
request budget, but wrk still reports the full duration as the run's time (so req/s would be
wrong), and the hook makes wrk parse every response into Lua tables.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

from .loadgen import LoadSpec, Target, run_load
from .stats import LoadResult

__all__ = ["WrkError", "lua_string", "parse_wrk_output", "run_wrk", "wrk_available",
           "wrk_script"]

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_COUNT_SUFFIX = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


class WrkError(RuntimeError):
    """wrk failed or printed a report this parser does not understand."""


def wrk_available() -> str | None:
    """The path of wrk, or None when it is not installed (``apt-get install wrk``)."""
    return shutil.which("wrk")


def lua_string(data: bytes) -> str:
    """``data`` as a Lua string literal that survives any byte value."""
    out = []
    for byte in data:
        ch = chr(byte)
        if (ch.isascii() and ch.isalnum()) or ch in " _-.,:;{}[]()=+*/!?@#$%^&|~<>'":
            out.append(ch)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def wrk_script(target: Target) -> str:
    """The Lua script that shapes every request of a run."""
    lines = [f"wrk.method = {lua_string(target.method.encode())}"]
    if target.body:
        lines.append(f"wrk.body = {lua_string(target.body)}")
    if target.content_type:
        lines.append(f'wrk.headers["Content-Type"] = {lua_string(target.content_type.encode())}')
    for key, value in target.headers:
        lines.append(f"wrk.headers[{lua_string(key.encode())}] = {lua_string(value.encode())}")
    return "\n".join(lines) + "\n"


def _to_ms(value: str, unit: str) -> float:
    if unit not in _UNITS_MS:
        raise WrkError(f"unknown latency unit {unit!r} in wrk output")
    return float(value) * _UNITS_MS[unit]


def parse_wrk_output(text: str, *, connections: int, client_cpu_s: float) -> LoadResult:
    """A LoadResult from wrk's ``--latency`` report.

    Errors are the non-2xx/3xx responses plus every socket error (connect, read, write,
    timeout). wrk gives no p50/p90/p99 without ``--latency`` and no exact max-per-request
    history; ``max_ms`` is its reported maximum."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise WrkError(f"no 'N requests in T' line in wrk output:\n{text.strip()[-800:]}")
    requests = int(m.group(1))
    elapsed_s = _to_ms(m.group(2), m.group(3)) / 1000.0
    pct: dict[int, float] = {}
    for pm in re.finditer(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text,
                          re.MULTILINE):
        pct[int(pm.group(1))] = _to_ms(pm.group(2), pm.group(3))
    if requests and not {50, 90, 99} <= pct.keys():
        raise WrkError("wrk output has no latency distribution (was --latency given?)")
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)\s+"
                    r"([\d.]+)(us|ms|s|m|h)", text)
    mean_ms = _to_ms(lat.group(1), lat.group(2)) if lat else 0.0
    max_ms = _to_ms(lat.group(5), lat.group(6)) if lat else 0.0
    kinds: dict[str, int] = {}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        for name, value in zip(("connect", "read", "write", "timeout"), sock.groups()):
            if int(value):
                kinds[f"socket {name}"] = int(value)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx and int(non2xx.group(1)):
        kinds["status >= 400"] = int(non2xx.group(1))
    return LoadResult(
        client="wrk", connections=connections, requests=requests,
        errors=sum(kinds.values()), elapsed_s=elapsed_s,
        p50_ms=pct.get(50, 0.0), p90_ms=pct.get(90, 0.0), p99_ms=pct.get(99, 0.0),
        mean_ms=mean_ms, max_ms=max_ms, client_cpu_s=client_cpu_s, error_kinds=kinds)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_once(wrk: str, target: Target, connections: int, seconds: float,
              timeout_s: float) -> tuple[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "request.lua"
        script.write_text(wrk_script(target), encoding="utf-8")
        duration = max(1, round(seconds))
        cmd = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
               f"--timeout={max(1, round(timeout_s))}s", "-s", str(script), target.url]
        cpu0 = _children_cpu_s()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=duration + timeout_s + 30)
        except subprocess.TimeoutExpired:
            raise WrkError(f"wrk did not finish: {' '.join(cmd)}") from None
        cpu = _children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with {proc.returncode}: {proc.stderr.strip() or proc.stdout}")
    return proc.stdout, cpu


def run_wrk(target: Target, spec: LoadSpec) -> LoadResult:
    """Warm up (with the Python client: wrk only takes whole seconds) then measure for
    ``spec.duration_s`` (rounded to whole seconds, at least 1; ``spec.max_requests`` does
    not apply, see the module doc). One wrk thread: it outruns this server many times over,
    and a second would take a core from it."""
    wrk = wrk_available()
    if wrk is None:
        raise WrkError("wrk is not on PATH (apt-get install -y wrk)")
    if spec.warmup_s > 0:
        run_load(target, LoadSpec(connections=spec.connections, duration_s=spec.warmup_s,
                                  max_requests=10**9, timeout_s=spec.timeout_s))
    text, cpu = _run_once(wrk, target, spec.connections, spec.duration_s, spec.timeout_s)
    return parse_wrk_output(text, connections=spec.connections, client_cpu_s=cpu)
