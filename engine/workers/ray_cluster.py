"""The frontend's link to a Ray cluster (``ray_address``): connect once at start, ship each
model version's directory through Ray's object store, and make the worker factory that the
pool of a model uses instead of local processes.

Ray is imported here, and only when ``ray_address`` is set (``pip install 'dagserve[ray]'``).
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import signal
import socket
import zipfile
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from .ray_placement import RayPlacement

log = logging.getLogger("dagserve.workers")


def zip_directory(root: Path) -> bytes:
    """Every regular file under ``root`` as a stored (uncompressed) zip: the bytes Ray
    ships to the node of each of the model's actors."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, path.relative_to(root).as_posix())
    return buf.getvalue()


class ShippedModel:
    """One model version's directory, put in the object store when its first actor starts
    and shared by all its actors; freed by Ray once the model (and this object) is gone."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self._ref: Any = None
        self._lock = asyncio.Lock()

    async def ref(self) -> Any:
        async with self._lock:
            if self._ref is None:
                import ray

                data = await asyncio.to_thread(zip_directory, self.model_dir)
                self._ref = await asyncio.to_thread(ray.put, data)
            return self._ref


class RayCluster:
    """A connected Ray driver (this frontend process)."""

    def __init__(self, address: str):
        self.address = address

    @classmethod
    def connect(cls, address: str) -> "RayCluster":
        """``ray.init`` once: ``auto``, a GCS ``host:port`` or ``ray://host:port``."""
        _check_reachable(address)
        try:
            import ray
        except ImportError:
            raise ConfigError("ray_address is set but Ray is not installed here: "
                              "pip install 'dagserve[ray]'") from None
        # Ray's core worker installs its own SIGTERM/SIGINT handlers (they log a stack and
        # exit): keep the server's, so that a stop still unloads the models and actors.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                     ignore_reinit_error=True)
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot connect to the Ray cluster at {address}: {first}") \
                from None
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        log.info("connected to the Ray cluster at %s: %s", address, ray.cluster_resources())
        return cls(address)

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()

    def missing(self, placement: RayPlacement) -> str | None:
        """Why no live node could take an actor with ``placement`` (a custom resource or
        a label no node has), else None. Blocking: call it in a thread."""
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        for name, amount in placement.resources.items():
            if not any(n.get("Resources", {}).get(name, 0) >= amount for n in nodes):
                return f"no live Ray node has {amount:g} of resource {name!r}"
        if placement.label_selector:
            wanted = placement.label_selector.items()
            if not any(all(_label_matches(n.get("Labels") or {}, k, v) for k, v in wanted)
                       for n in nodes):
                return f"no live Ray node has the labels {placement.label_selector}"
        return None

    def worker_factory(self, model_dir: Path, placement: RayPlacement) -> Callable[..., Any]:
        """What the pool of one model version calls to make a worker: a Ray actor."""
        from .ray_worker import RayWorker

        return functools.partial(RayWorker, cluster=self, model=ShippedModel(model_dir),
                                 placement=placement)


def _check_reachable(address: str) -> None:
    """Refuse an address nothing listens on at once: ``ray.init`` would retry for minutes."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"ray_address must be auto, host:port or ray://host:port, "
                          f"got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: "
                          f"{exc.strerror or exc}") from None


def _label_matches(labels: dict[str, str], key: str, selector: str) -> bool:
    """Ray's label selector values: ``v``, ``!v``, ``in(a,b)``, ``!in(a,b)``."""
    value = labels.get(key)
    negate = selector.startswith("!")
    body = selector[1:] if negate else selector
    if body.startswith("in(") and body.endswith(")"):
        match = value in {v.strip() for v in body[3:-1].split(",")}
    else:
        match = value == body
    return match != negate
