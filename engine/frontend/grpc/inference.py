"""TorchServe's gRPC inference service (``org.pytorch.serve.grpc.inference``): Ping,
Predictions, StreamPredictions, StreamPredictions2.

The request's ``input`` map becomes the request's parameters (as form fields do over
HTTP). A ``model_name`` that names a workflow (and no model) runs the workflow: a dagserve
extension. Predictions answers with the whole result (a streaming handler's chunks joined);
StreamPredictions sends one response per chunk. StreamPredictions2 serves the requests of
a bidirectional stream in order, each with its sequence id (given, or a new
``ts-seq-<uuid>`` whose first request is marked as the sequence start); the handler reads
it with ``context.get_sequence_id(idx)``; on a stateful model (``sequenceBatching``) the
request waits for its turn in the sequence (frontend/sequences.py); an error answers that
request with ``status`` set and the stream goes on, as TorchServe does.
"""

from __future__ import annotations

import json
from functools import partial
from typing import AsyncIterator

import grpc

from ...errors import BadRequestError, DagserveError
from ...handler.context import SEQUENCE_END_HEADER
from ...messages import Param, Request, Response
from ...registry import Registry
from ...workers.stream import ResultStream
from ..middleware import new_request_id
from ..sequences import gates_for, sequence_headers
from ..submit import submit_to_model
from .messages import load
from .status import abort, grpc_code

HEALTHY = json.dumps({"status": "Healthy"}, indent=2)

pb, services = load("inference.proto")


def _failed(resp: Response) -> DagserveError:
    return DagserveError(resp.message or resp.value.decode("utf-8", "replace")
                         or "Prediction failed", resp.code)


class InferenceService(services.InferenceAPIsServiceServicer):
    def __init__(self, registry: Registry, run_workflow):
        self.registry = registry
        self.run_workflow = run_workflow
        self.sequences = gates_for(registry)

    async def _start(self, request, headers: dict[str, str],
                     sequence: str | None = None) -> Response | ResultStream:
        name = request.model_name
        if not name:
            raise BadRequestError("Parameter model_name is required.")
        version = request.model_version or None
        params = [Param(key, None, value) for key, value in request.input.items()]
        req = Request(new_request_id(), params, headers)
        try:
            mv = self.registry.get(name, version)
        except DagserveError:
            if name in self.registry.workflows and self.run_workflow:
                entry = self.registry.workflow(name, version)  # 404 for an unknown version
                return await self.run_workflow(name, req, entry.version)
            raise
        gate = self.sequences.for_model(mv) if sequence else None
        if gate is not None:  # a stateful model: the request's turn in its sequence
            return await gate.run(sequence, partial(submit_to_model, mv, req))
        return await submit_to_model(mv, req)

    async def Ping(self, request, context):
        """Liveness, as ``GET /ping``: Healthy while the server serves."""
        return pb.TorchServeHealthResponse(health=HEALTHY)

    async def Predictions(self, request, context):
        try:
            resp = await self._start(request, {})
            if resp.__class__ is ResultStream:
                resp = await resp.collect()
            if resp.code >= 400:
                raise _failed(resp)
        except DagserveError as exc:
            await abort(context, exc)
        return pb.PredictionResponse(prediction=resp.value)

    async def StreamPredictions(self, request, context) -> AsyncIterator:
        stream = None
        try:
            resp = await self._start(request, {})
            if resp.__class__ is not ResultStream:
                if resp.code >= 400:
                    raise _failed(resp)
                yield pb.PredictionResponse(prediction=resp.value)
                return
            stream = resp
            async for chunk in stream:
                if chunk.code >= 400:
                    raise _failed(chunk)
                yield pb.PredictionResponse(prediction=chunk.value)
            stream = None
        except DagserveError as exc:
            await abort(context, exc)
        finally:
            if stream is not None:  # the client went away (or an error): stop the handler
                stream.cancel()

    async def StreamPredictions2(self, request_iterator, context) -> AsyncIterator:
        async for request in request_iterator:
            headers: dict[str, str] = {}
            sequence_id = sequence_headers(
                headers, request.sequence_id if request.HasField("sequence_id") else None)
            if request.input.get(SEQUENCE_END_HEADER, b"").lower() == b"true":
                headers[SEQUENCE_END_HEADER] = "true"
            try:
                resp = await self._start(request, headers, sequence_id)
                if resp.__class__ is ResultStream:
                    try:
                        async for chunk in resp:
                            yield self._sequence_reply(chunk, sequence_id)
                    finally:
                        resp.cancel()  # nothing left to stop unless the client went away
                    continue
                yield self._sequence_reply(resp, sequence_id)
            except DagserveError as exc:
                yield self._sequence_error(exc.status, exc.message, sequence_id)

    def _sequence_reply(self, resp: Response, sequence_id: str):
        if resp.code >= 400:
            error = _failed(resp)
            return self._sequence_error(error.status, error.message, sequence_id)
        return pb.PredictionResponse(prediction=resp.value, sequence_id=sequence_id)

    @staticmethod
    def _sequence_error(status: int, message: str, sequence_id: str):
        from google.rpc import status_pb2

        code = grpc_code(status).value[0]
        return pb.PredictionResponse(sequence_id=sequence_id,
                                     status=status_pb2.Status(code=code, message=message))


def add_to_server(server: grpc.aio.Server, registry: Registry, run_workflow) -> None:
    services.add_InferenceAPIsServiceServicer_to_server(
        InferenceService(registry, run_workflow), server)
