"""``dagserve run`` and ``dagserve graph``: the author's commands.

``dagserve run SPEC_OR_WAR --model-store DIR --input FILE`` runs one request through a
workflow without a server (``local_run.py``): the output goes to stdout, the trace (a table,
or JSON with ``--trace json``) to stderr. Exit status 0 when the workflow answered < 400,
1 when it failed (the error and the workers' log tail are printed), 2 for usage errors.

``dagserve graph WORKFLOW [--out FILE] [--format F]`` asks a running server's management
API for the picture of a registered workflow (``GET /workflows/{w}/graph``): Mermaid, DOT or
JSON, chosen by ``--out``'s extension, else ``--format`` (default mermaid), written to the
file or stdout. The management key is ``--token``, else read from ``key_file.json`` in the
current directory when there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from dagserve.workflows.render import FORMATS, RenderError, format_for_path

COMMANDS = ("run", "graph")
_COLUMNS = (("node", 16), ("status", 9), ("try", 3), ("outcome", 9), ("start ms", 9),
            ("took ms", 9), ("queue ms", 9), ("batch", 5), ("worker", 7), ("handler ms", 10),
            ("in B", 8), ("out B", 8))


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def trace_table(trace: dict[str, Any]) -> str:
    """A trace (``Trace.to_json()``) as the fixed-width table ``dagserve run`` prints."""
    head = (f"trace {trace['traceId']}  {trace['kind']} {trace['target']}  "
            f"status {trace['status']}  total {_num(trace['totalMs'])} ms")
    lines = [head]
    if trace.get("error"):
        lines.append(f"error: {trace['error']}")
    lines.append("  ".join(name.ljust(width) for name, width in _COLUMNS).rstrip())
    for node in trace["nodes"]:
        attempts = node["attempts"] or [None]
        for att in attempts:
            if att is None:
                cells = [node["node"], node["status"]] + ["-"] * (len(_COLUMNS) - 2)
            else:
                cells = [node["node"], node["status"], att["attempt"], att["outcome"],
                         att["startMs"], att["durationMs"], att["queueWaitMs"],
                         att["batchSize"], att["workerId"], att["workerMs"], att["bytesIn"],
                         att["bytesOut"]]
            lines.append("  ".join(_num(c).ljust(w) for c, (_, w) in
                                   zip(cells, _COLUMNS)).rstrip())
        if node.get("reason"):
            lines.append(f"    {node['node']}: {node['reason']}")
    return "\n".join(lines) + "\n"


# -- run --------------------------------------------------------------------------------

def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dagserve run",
                                description="Run one request through a workflow locally, "
                                            "without a server, and print its trace.")
    p.add_argument("workflow", metavar="SPEC_OR_WAR", help="a .war, or a workflow YAML spec")
    p.add_argument("--model-store", required=True, metavar="DIR",
                   help="where the spec's model urls (.mar files) are")
    p.add_argument("--input", required=True, metavar="FILE",
                   help="the request body ('-' reads stdin)")
    p.add_argument("--handler", metavar="FILE",
                   help="the workflow's function file, for a YAML spec with function nodes")
    p.add_argument("--extra-files", metavar="FILES",
                   help="comma-separated files the spec's handler needs (as workflow-archiver "
                        "takes them)")
    p.add_argument("--content-type", help="the request's Content-Type")
    p.add_argument("--trace", choices=("table", "json", "none"), default="table",
                   help="how to print the trace on stderr (default: table)")
    return p


def run_command(argv: Sequence[str]) -> int:
    args = _run_parser().parse_args(argv)
    source, store = Path(args.workflow), Path(args.model_store)
    for path, what in ((source, "workflow"), (store, "model store")):
        if not path.exists():
            print(f"dagserve run: error: {what} {path} does not exist", file=sys.stderr)
            return 2
    handler = Path(args.handler) if args.handler else None
    try:
        body = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
    except OSError as exc:
        print(f"dagserve run: error: cannot read {args.input}: {exc.strerror}",
              file=sys.stderr)
        return 2
    from .local_run import run

    result = run(source, store, body, args.content_type, handler, args.extra_files)
    if result.response is not None:
        sys.stdout.buffer.write(result.response.value)
        if not result.response.value.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
    if result.trace is not None and args.trace != "none":
        described = result.trace.to_json()
        sys.stderr.write(json.dumps(described, indent=2) + "\n" if args.trace == "json"
                         else trace_table(described))
    if result.error is not None:
        print(f"dagserve run: {result.error.status} {result.error.message}", file=sys.stderr)
        if result.trace is None and result.worker_log.strip():
            tail = "\n".join(result.worker_log.strip().splitlines()[-20:])
            print(f"worker output:\n{tail}", file=sys.stderr)
        return 1
    return 0 if result.response.code < 400 else 1


# -- graph ------------------------------------------------------------------------------

def _graph_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dagserve graph",
                                description="Write the DAG of a registered workflow as "
                                            "Mermaid, Graphviz DOT or JSON.")
    p.add_argument("workflow", help="the registered workflow's name")
    p.add_argument("--workflow-version", metavar="V",
                   help="one of its versions (default: the default version)")
    p.add_argument("--out", metavar="FILE",
                   help=".mmd/.mermaid, .dot/.gv or .json (default: stdout)")
    p.add_argument("--format", choices=FORMATS, help="when writing to stdout (default mermaid)")
    p.add_argument("--management-address", default="http://127.0.0.1:8081",
                   help="the server's management API (default http://127.0.0.1:8081)")
    p.add_argument("--token", help="the management key (default: key_file.json here, if any)")
    return p


def _management_key(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    try:
        return json.loads(Path("key_file.json").read_text())["management"]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def graph_command(argv: Sequence[str]) -> int:
    args = _graph_parser().parse_args(argv)
    try:
        fmt = format_for_path(args.out) if args.out else (args.format or "mermaid")
    except RenderError as exc:
        print(f"dagserve graph: error: {exc}", file=sys.stderr)
        return 2
    url = (f"{args.management_address.rstrip('/')}/workflows/"
           f"{urllib.parse.quote(args.workflow, safe='')}/graph?format={fmt}")
    if args.workflow_version:
        url += "&version=" + urllib.parse.quote(args.workflow_version, safe="")
    request = urllib.request.Request(url)
    key = _management_key(args.token)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        print(f"dagserve graph: error: {exc.code} {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"dagserve graph: error: cannot reach {args.management_address}: "
              f"{getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str]) -> int:
    """``argv`` starts with the command's name (one of COMMANDS)."""
    command, rest = argv[0], list(argv[1:])
    try:
        return run_command(rest) if command == "run" else graph_command(rest)
    except SystemExit as exc:  # --help, or a usage error argparse explained
        return exc.code if isinstance(exc.code, int) else 2
