"""TorchServe's sequence batching, for stateful models (``sequenceBatching: true`` in the
archive's model-config.yaml).

Every request of such a model belongs to a sequence: the id the client sent (HTTP header
``ts_request_sequence_id``; gRPC StreamPredictions2's ``sequence_id``), else a new
``ts-seq-<uuid>`` whose first request is marked ``ts_request_sequence_start: true``. The
handler reads it with ``context.get_sequence_id(idx)``. The requests of one sequence run one
at a time, in the order they came; at most ``maxSequenceJobQueueSize`` (default 1) wait
behind the running one, and at most ``maxNumSequence`` sequences are open at once (default
``batch size x max workers``, as TorchServe); beyond either the request is refused with 503
and TorchServe's message. Not done: TorchServe pins a sequence to one worker; here its
requests go to whichever worker is free, so a handler that keeps a sequence's state in
memory needs one worker.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

from ..errors import ServiceUnavailableError
from ..handler.context import SEQUENCE_ID_HEADER, SEQUENCE_START_HEADER
from ..handler.model_config import load_model_config

T = TypeVar("T")


@dataclass
class _Sequence:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0  # requests of the sequence in the gate (running or waiting)


class SequenceGate:
    """The open sequences of one stateful model version."""

    def __init__(self, model: str, version: str, max_queue: int, max_sequences: int):
        self.model, self.version = model, version
        self.max_queue = max(1, max_queue)
        self.max_sequences = max(1, max_sequences)
        self._open: dict[str, _Sequence] = {}

    def _refuse(self) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"Model \"{self.model}\" Version {self.version} has no worker to serve inference "
            "request. Please use scale workers API to add workers. If this is a sequence "
            "inference, please check if it is closed, or expired; or exceeds "
            "maxSequenceJobQueueSize")

    async def run(self, sequence_id: str, send: Callable[[], Awaitable[T]]) -> T:
        """``send()`` (a request of the sequence to the model) in the sequence's turn."""
        seq = self._open.get(sequence_id)
        if seq is None:
            if len(self._open) >= self.max_sequences:
                raise self._refuse()
            seq = self._open[sequence_id] = _Sequence()
        elif seq.waiting > self.max_queue:  # the running one plus max_queue waiting
            raise self._refuse()
        seq.waiting += 1
        try:
            async with seq.lock:
                return await send()
        finally:
            seq.waiting -= 1
            if seq.waiting == 0:
                del self._open[sequence_id]


def sequence_headers(headers: dict[str, str], given: str | None) -> str:
    """Add the sequence id (``given``, else a new one marked as a start) to ``headers``."""
    if not given:
        given = f"ts-seq-{uuid.uuid4()}"
        headers[SEQUENCE_START_HEADER] = "true"
    headers[SEQUENCE_ID_HEADER] = given
    return given


class SequenceGates:
    """Which registered model versions are stateful, read once from their model-config."""

    def __init__(self) -> None:
        self._gates: dict[tuple[str, str], tuple[object, SequenceGate | None]] = {}

    def for_model(self, mv) -> SequenceGate | None:
        """The gate of a stateful model version, None for any other."""
        known = self._gates.get((mv.name, mv.version))
        if known is not None and known[0] is mv:  # else: registered again since
            return known[1]
        gate = None
        try:
            config = load_model_config(mv.model_dir, mv.manifest)
        except (OSError, ValueError):
            config = {}
        if config.get("sequenceBatching") is True:
            gate = SequenceGate(
                mv.name, mv.version, int(config.get("maxSequenceJobQueueSize", 1)),
                max(int(config.get("maxNumSequence", 0)), mv.batch_size * mv.max_workers))
        self._gates[(mv.name, mv.version)] = (mv, gate)
        return gate


_BY_REGISTRY: "weakref.WeakKeyDictionary[object, SequenceGates]" = weakref.WeakKeyDictionary()


def gates_for(registry) -> SequenceGates:
    """The gates of a registry's models, one set for every frontend (HTTP and gRPC requests
    of one sequence wait for each other)."""
    gates = _BY_REGISTRY.get(registry)
    if gates is None:
        gates = _BY_REGISTRY[registry] = SequenceGates()
    return gates
