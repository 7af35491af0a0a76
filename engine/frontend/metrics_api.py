"""The metrics API (default 127.0.0.1:8082): ``GET /metrics`` in the Prometheus text format,
optionally only the families named by ``name[]=`` (as TorchServe). No token is needed.

The text is written here rather than by ``prometheus_client.generate_latest``, which would
rename every counter family to ``<name>_total``: TorchServe's users scrape
``ts_inference_latency_microseconds`` and ``Requests2XX`` under exactly those names.
"""

from __future__ import annotations

from typing import Iterable

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the classic text format, which is what we write


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def render(families: Iterable[Metric], names: set[str] | None = None) -> bytes:
    """Prometheus text (format 0.0.4) of ``families``; with ``names``, only the families
    whose name or one of whose sample names is in it."""
    out: list[str] = []
    for fam in families:
        if names and fam.name not in names and not any(s.name in names for s in fam.samples):
            continue
        mtype = "untyped" if fam.type == "unknown" else fam.type
        out.append(f"# HELP {fam.name} {_escape_help(fam.documentation)}\n")
        out.append(f"# TYPE {fam.name} {mtype}\n")
        for s in fam.samples:
            if s.labels:
                labels = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in s.labels.items())
                out.append(f"{s.name}{{{labels}}} {floatToGoString(s.value)}\n")
            else:
                out.append(f"{s.name} {floatToGoString(s.value)}\n")
    return "".join(out).encode()


def build_metrics_app(collector, middlewares: list) -> web.Application:
    """``collector``: a ``dagserve.engine.metrics.MetricsCollector`` (its ``prometheus`` registry is
    what is scraped)."""

    async def metrics(request: web.Request) -> web.Response:
        names = set(request.query.getall("name[]", []))
        body = render(collector.prometheus.collect(), names or None)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application(middlewares=middlewares)
    app.router.add_get("/metrics", metrics)
    return app
