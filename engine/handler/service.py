"""One loaded model inside a worker: decodes a batch of protocol requests, calls the
handler, and turns what it returns (or raises) into protocol responses.

Errors (TorchServe's, for the whole batch): a ``PredictionException`` -> its code and
message; ``MemoryError`` or a CUDA error -> 507; any other exception -> 503 "Prediction
failed" (the traceback goes to stderr, i.e. the model log); a result that is not a list ->
503 "Invalid model predict output"; a list of the wrong length -> 503 "number of batch
response mismatched"; an item that cannot be encoded -> 503 "Unsupported model output data
type.".

Output items: bytes as is, str as UTF-8, a tensor as ``torch.save`` bytes, anything else
``json.dumps(item, indent=2)`` (tensors and numpy values nested inside become lists or
numbers; TorchServe fails those). A status a handler set on a request through the context
becomes that response's code, with its phrase as the message (for a code >= 400 without a
phrase, the output text); its content type and headers are kept.
"""

from __future__ import annotations

import io
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagserve.archiver.manifest import read_manifest_data

from ..messages import Request, Response
from .context import Context, RequestProcessor
from .loader import EntryPoint, load_handler
from .metrics import MetricsCache
from .model_config import load_model_config
from .request_envelope import envelope_class
from .streaming import StreamCancelled
from .util import PredictionException

if TYPE_CHECKING:
    from .node_group import NodeGroupService

__all__ = ["Service", "ServiceConfig", "load_service"]

V2_HEADER = "dagserve-protocol-v2"  # request header: came through the Open Inference Protocol


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """What a worker is told about its model (the frontend's settings)."""

    model_dir: Path
    model_name: str
    handler: str | None = None  # None: the manifest's model.handler
    gpu_id: int | None = None
    batch_size: int = 1
    decode_input: bool = True
    limit_max_image_pixels: bool = True
    server_version: str = ""
    config_file: str | None = None  # model-config YAML; relative paths are in model_dir
    envelope: str | None = None  # service_envelope: every batch goes through it
    # A workflow's node group (node_group.py): node name -> [its model name, its handler,
    # its model directory ("": model_dir)]
    group: dict[str, list[str]] | None = None


def load_service(config: ServiceConfig) -> "Service | NodeGroupService":
    """Read the manifest and model config, build the context, load the handler (or, for a
    node group, one handler per node, each from its own directory)."""
    model_dir = Path(config.model_dir).resolve()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if not config.group:
        return _load_one(config, model_dir, config.handler, config.model_name, config.config_file)
    from .node_group import NodeGroupService

    # Each model's handler module is its own even when two have the same file name
    # (util.import_from_dir); the frontend groups no models whose other files share a name.
    services = {}
    for node, (model_name, handler, member_dir) in config.group.items():
        directory = Path(member_dir).resolve() if member_dir else model_dir
        try:
            services[node] = _load_one(config, directory, handler, model_name,
                                       config.config_file if directory == model_dir else None)
        except Exception as exc:  # the worker's load error names which of its models failed
            raise RuntimeError(f"{model_name}: {type(exc).__name__}: {exc}") from exc
    return NodeGroupService(services)


def _load_one(config: ServiceConfig, model_dir: Path, handler: str | None, model_name: str,
              config_file: str | None) -> Service:
    manifest = read_manifest_data(model_dir)
    model_section = manifest.get("model")
    if not handler and isinstance(model_section, dict):
        handler = model_section.get("handler")
    if not handler:
        raise ValueError("no handler given and the manifest names none")
    if not isinstance(model_section, dict):
        # A workflow's function worker has a WAR manifest (or none): give handlers the
        # model section they expect to find.
        manifest = dict(manifest, model={"modelName": model_name, "handler": handler})
    yaml_config = load_model_config(model_dir, manifest, config_file)
    context = Context(model_name, str(model_dir), manifest, config.batch_size,
                      config.gpu_id, config.server_version, config.limit_max_image_pixels,
                      MetricsCache(model_name), yaml_config)
    entry = load_handler(handler, model_dir, context)
    return Service(context, entry, decode_input=config.decode_input, envelope=config.envelope)


def decode_value(content_type: str | None, value: bytes) -> Any:
    """``application/json`` -> parsed (bytes when it does not parse), ``text/*`` -> str
    (bytes when not UTF-8), else the bytes."""
    if not content_type:
        return value
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        try:
            return json.loads(value)
        except (ValueError, UnicodeDecodeError):
            return value
    if media.startswith("text/"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _json_default(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)  # tensors, numpy arrays and scalars
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode_output(item: Any) -> bytes:
    """One handler output item as response bytes (see the module docstring)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    torch = sys.modules.get("torch")  # not imported: no tensor exists (function workers
    if torch is not None and isinstance(item, torch.Tensor):  # need not pay for torch)
        buf = io.BytesIO()
        torch.save(item, buf)
        return buf.getvalue()
    return json.dumps(item, indent=2, default=_json_default).encode("utf-8")


def _is_cuda_error(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return "CUDA" in str(exc)


class Service:
    """Serves batches with one loaded handler."""

    def __init__(self, context: Context, entry_point: EntryPoint, *,
                 decode_input: bool = True, envelope: str | None = None) -> None:
        self.context = context
        self._decode_input = decode_input
        self._raw_entry = entry_point
        if envelope:
            entry_point = envelope_class(envelope)(entry_point).handle
        self._entry_point = entry_point
        # Requests that came through the Open Inference Protocol: the kservev2 envelope
        self._v2_entry = entry_point if envelope == "kservev2" else None

    def predict(self, requests: list[Request]) -> tuple[list[Response], list[dict]]:
        """Run one batch; never raises. Returns the responses (in request order) and the
        metrics recorded during the batch."""
        context = self.context
        metrics = context.metrics
        decode = self._decode_input
        ids: dict[int, str] = {}
        processors: list[RequestProcessor] = []
        batch: list[dict] = []
        for idx, req in enumerate(requests):
            ids[idx] = req.id
            processors.append(RequestProcessor(req.headers, req.params))
            if decode:
                batch.append({p.name: decode_value(p.content_type, p.value) for p in req.params})
            else:
                batch.append({p.name: p.value for p in req.params})
        context.request_ids = ids
        context.request_processor = processors
        metrics.request_ids = ids

        start = time.perf_counter()
        try:
            output = self._call(requests, batch, context)
        except StreamCancelled:
            print(f"model {context.model_name}: stream stopped: its client went away",
                  file=sys.stderr)
            return self._fail(requests, 499, "Client closed the stream")
        except MemoryError:
            traceback.print_exc(file=sys.stderr)
            return self._fail(requests, 507, "Out of resources: the worker ran out of memory")
        except Exception as exc:
            # A handler's own copy of TorchServe's exception counts too.
            if isinstance(exc, PredictionException) or (
                    type(exc).__name__ == "PredictionException"
                    and isinstance(getattr(exc, "error_code", None), int)):
                code = exc.error_code if 100 <= exc.error_code <= 599 else 500
                message = getattr(exc, "message", None) or str(exc)
                print(f"Prediction error ({code}): {message}", file=sys.stderr)
                return self._fail(requests, code, str(message))
            traceback.print_exc(file=sys.stderr)
            if _is_cuda_error(exc):
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                return self._fail(requests, 507, f"Out of resources: {first}")
            return self._fail(requests, 503, "Prediction failed")
        elapsed_ms = (time.perf_counter() - start) * 1000

        if not isinstance(output, list):
            print(f"model {context.model_name}: handler returned {type(output).__name__}, "
                  f"not a list", file=sys.stderr)
            return self._fail(requests, 503, "Invalid model predict output")
        if len(output) != len(requests):
            print(f"model {context.model_name}: number of batch response mismatched, "
                  f"expected {len(requests)}, got {len(output)}", file=sys.stderr)
            return self._fail(requests, 503, "number of batch response mismatched")

        responses = []
        try:
            for req, item, processor in zip(requests, output, processors):
                responses.append(self._response(req.id, encode_output(item), processor))
        except (TypeError, ValueError):
            traceback.print_exc(file=sys.stderr)
            return self._fail(requests, 503, "Unsupported model output data type.")
        metrics.add_time("HandlerTime", round(elapsed_ms, 3))
        return responses, metrics.drain()

    def _call(self, requests: list[Request], batch: list[dict], context: Context) -> Any:
        """The handler on the batch; requests marked as Open Inference Protocol ones go
        through the kservev2 envelope (a batch of both kinds: one call for each)."""
        v2 = [i for i, req in enumerate(requests) if V2_HEADER in req.headers]
        if not v2:
            return self._entry_point(batch, context)
        if self._v2_entry is None:
            self._v2_entry = envelope_class("kservev2")(self._raw_entry).handle
        if len(v2) == len(requests):
            return self._v2_entry(batch, context)
        marked = set(v2)
        plain = [i for i in range(len(requests)) if i not in marked]
        output: list = [None] * len(requests)
        processors, ids = context.request_processor or [], context.request_ids or {}
        for entry, subset in ((self._entry_point, plain), (self._v2_entry, v2)):
            context.request_processor = [processors[i] for i in subset]
            context.request_ids = {k: ids.get(i) for k, i in enumerate(subset)}
            part = entry([batch[i] for i in subset], context)
            if not isinstance(part, list) or len(part) != len(subset):
                return part  # reported as the handler's wrong output below
            for i, item in zip(subset, part):
                output[i] = item
        context.request_processor, context.request_ids = processors, ids
        return output

    @staticmethod
    def _response(req_id: str, value: bytes, processor: RequestProcessor) -> Response:
        code = processor.get_response_status_code()
        headers = processor.get_response_headers()
        if code == 200 and not headers:
            return Response(req_id, 200, value)
        content_type = None
        out_headers: dict[str, str] = {}
        for key, val in headers.items():
            if key.lower() == "content-type":
                content_type = str(val) if val else None
            else:
                out_headers[str(key)] = str(val)
        message = processor.get_response_status_phrase() or ""
        if not isinstance(code, int) or not 100 <= code <= 599:
            print(f"handler set an invalid status {code!r}; sending 500", file=sys.stderr)
            code, message = 500, f"Handler set an invalid status code: {code!r}"
        elif code >= 400 and not message:
            message = value.decode("utf-8", errors="replace")
        return Response(req_id, code, value, content_type, out_headers, message)

    def _fail(self, requests: list[Request], code: int,
              message: str) -> tuple[list[Response], list[dict]]:
        return ([Response(r.id, code, b"", None, {}, message) for r in requests],
                self.context.metrics.drain())
