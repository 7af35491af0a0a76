"""The Ray Serve side of the peer benchmark: run by ``benchmarks/.venv-rayserve/bin/python``
(not part of the ``benchmarks`` package: it needs only ``ray[serve]``).

    python benchmarks/rayserve_app.py --port P [--deploy echo]

Starts a one-node Ray cluster (``num_cpus`` = the machine's cores, no dashboard), Serve's
HTTP proxy on 127.0.0.1:P, deploys the applications named by ``--deploy``, prints
``ready``, then reads commands on stdin, one a line, answering each with ``ok <what>`` or
``error <why>``: ``deploy <app>``, ``delete <app>``, ``quit`` (or end of input: Serve and Ray
are shut down). Applications: ``echo`` (one deployment returning the request body) and
``chain<k>`` (k deployments composed with DeploymentHandle: node 1 is the ingress, each node
awaits the next one's answer to the same bytes). Each is routed at ``/<app>``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

APP_NAME = re.compile(r"^(echo|chain([1-9]))$")


def chain_length(app: str) -> int:
    """Nodes in an application: ``echo`` is one, ``chain<k>`` is k (1-9)."""
    m = APP_NAME.match(app)
    if m is None:
        raise ValueError(f"unknown application {app!r} (echo or chain1..chain9)")
    return int(m.group(2) or 1)


def build_app(app: str):
    """The bound Serve application: node 1 (the ingress) -> node 2 -> ... -> node k."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
    class Node:
        def __init__(self, next_node=None):
            self.next = next_node  # a DeploymentHandle, or None for the last node

        async def forward(self, data: bytes) -> bytes:
            return data if self.next is None else await self.next.forward.remote(data)

        async def __call__(self, request: Request) -> Response:
            return Response(await self.forward(await request.body()),
                            media_type="application/octet-stream")

    k = chain_length(app)
    node = None
    for i in range(k, 0, -1):
        node = Node.options(name=f"{app}_node{i}").bind(node)
    return node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayserve_app.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deploy", action="append", default=[])
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="rs-"))
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})

    def deploy(app: str) -> None:
        serve.run(build_app(app), name=app, route_prefix=f"/{app}", blocking=False)

    try:
        for app in args.deploy:
            deploy(app)
        print("ready", flush=True)
        for line in sys.stdin:
            verb, _, what = line.strip().partition(" ")
            try:
                if verb == "deploy":
                    deploy(what)
                elif verb == "delete":
                    serve.delete(what)
                elif verb == "quit":
                    print("ok quit", flush=True)
                    break
                else:
                    raise ValueError(f"unknown command {verb!r}")
                print(f"ok {what}", flush=True)
            except Exception as exc:  # reported to the driver, which decides
                print(f"error {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
