"""How the side-by-side benchmark reaches and reconfigures each server: dagserve, Triton,
Ray Serve. A driver names the request of an application (``echo``, ``chain1``, ``chain3``),
adds one, or swaps one for another, on a started server; the measuring is common
(``benchmarks.side_by_side``)."""

from __future__ import annotations

import urllib.parse
from importlib import metadata
from pathlib import Path

from .artifacts import BenchArtifacts, build_function_wars, build_shared_model_wars
from .loadgen import Target
from .peer import PeerError
from .servers import Ports, ServerError, ServerProcess, dagserve_command, free_ports, http_call, \
    write_config

__all__ = ["BODY_1K", "DagserveDriver", "Driver", "RayServeDriver", "TritonDriver",
           "make_drivers"]

# 1 KB, printable, not one byte repeated
BODY_1K = bytes(32 + (i * 7) % 95 for i in range(1024))


class Driver:
    """One server under test (``server`` is started and stopped by the caller)."""

    name = ""
    version = ""
    server: ServerProcess

    def request(self, app: str) -> Target:
        raise NotImplementedError

    def add(self, app: str) -> None:
        raise NotImplementedError

    def remove(self, app: str) -> None:
        raise NotImplementedError


class DagserveDriver(Driver):
    """Echo: ``POST /predictions/echo`` (preloaded); chains: workflows of echo nodes
    (batch size 1) registered through the management API, ``POST /wfpredict/<chain>``."""

    name = "dagserve"
    # also measured: chains of function nodes (fchain1, fchain3) and of echo models that
    # share a worker (schain1, schain3: share-workers)
    function_chains = True

    def __init__(self, art: BenchArtifacts, out: Path):
        ports = Ports(*free_ports(3))
        config = write_config(out / "config.properties", ports, art.store)
        self.server = ServerProcess("dagserve", dagserve_command(
            config, art.store, f"echo={art.echo_mar}"), out, ports)
        self.art = art
        self.function_wars = {**build_function_wars(art), **build_shared_model_wars(art)}
        try:
            self.version = metadata.version("dagserve")
        except metadata.PackageNotFoundError:
            self.version = "source tree"

    def request(self, app: str) -> Target:
        path = "/predictions/echo" if app == "echo" else f"/wfpredict/{app}"
        return Target("127.0.0.1", self.server.ports.inference, path, body=BODY_1K)

    def add(self, app: str) -> None:
        war = self.function_wars[app] if app.startswith(("f", "s")) else \
            self.art.chains[int(app[len("chain"):])]
        reply = self.server.register_workflow(war, app)
        if reply.status != 200:
            raise ServerError(f"dagserve refused {app}: {reply.message()[:300]}")

    def remove(self, app: str) -> None:
        if app == "echo":
            self.server.unregister_model(app)
        else:
            self.server.unregister_workflow(app)


class TritonDriver(Driver):
    """v2 REST infer with a binary UINT8 tensor; models loaded and unloaded through the
    repository API (explicit model control)."""

    name = "Triton"

    def __init__(self, out: Path, log=print):
        from .peer_triton import (ensure_triton, triton_command, triton_env,
                                  write_model_repository)
        install = ensure_triton(log=log)
        repo = write_model_repository(out / "model_repository", chains=(1, 3))
        http, grpc, metrics = free_ports(3)
        self.server = ServerProcess("Triton", triton_command(install, repo, http, grpc, metrics),
                                    out, Ports(http, grpc, metrics), env=triton_env(install))
        self.version = f"nvidia-pytriton {install.version}"
        self.loaded = {"echo"}

    def request(self, app: str) -> Target:
        from .peer_triton import infer_request
        body, headers = infer_request(BODY_1K)
        return Target("127.0.0.1", self.server.ports.inference, f"/v2/models/{app}/infer",
                      body=body, headers=headers)

    def _repository(self, verb: str, model: str) -> None:
        url = (f"{self.server.inference}/v2/repository/models/"
               f"{urllib.parse.quote(model)}/{verb}")
        reply = http_call("POST", url, b"", timeout=120, content_type="application/json")
        if reply.status != 200:
            raise ServerError(f"Triton: {verb} {model}: HTTP {reply.status} {reply.text[:300]}")

    def add(self, app: str) -> None:
        from .peer_triton import chain_models
        for model in chain_models(int(app[len("chain"):])):
            if model not in self.loaded:  # loading a loaded model would reload it
                self._repository("load", model)
                self.loaded.add(model)

    def remove(self, app: str) -> None:
        self._repository("unload", app)
        self.loaded.discard(app)


class RayServeDriver(Driver):
    """``POST /<app>`` on Serve's proxy; applications deployed and deleted on command."""

    name = "Ray Serve"

    def __init__(self, out: Path, log=print):
        from .peer_rayserve import RayServeServer, ensure_rayserve
        install = ensure_rayserve(log=log)
        self.server = RayServeServer(install, out, free_ports(1)[0])
        self.version = f"ray[serve] {install.version}"

    def request(self, app: str) -> Target:
        return Target("127.0.0.1", self.server.ports.inference, f"/{app}", body=BODY_1K)

    def add(self, app: str) -> None:
        self.server.command(f"deploy {app}")

    def remove(self, app: str) -> None:
        self.server.command(f"delete {app}")


PEER_DRIVERS = {"triton": TritonDriver, "rayserve": RayServeDriver}


def make_drivers(peers: list[str], art: BenchArtifacts, out: Path,
                 log=print) -> tuple[list[Driver], dict[str, str]]:
    """dagserve, then each peer that is (or can be) installed; the others with the reason."""
    drivers: list[Driver] = [DagserveDriver(art, out / "dagserve")]
    missing: dict[str, str] = {}
    for peer in peers:
        try:
            drivers.append(PEER_DRIVERS[peer](out / peer, log))
        except PeerError as exc:
            missing[peer] = str(exc)
            log(f"{peer} is not available: {exc}")
    return drivers, missing
