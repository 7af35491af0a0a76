"""What a handler learns about its model and the current batch (also ``ts.context``).

The fields and methods are TorchServe's. Per batch the service swaps in ``request_ids``
and one :class:`RequestProcessor` per request; the status, content type and headers a
handler sets there become the protocol response of that request.

Request headers of request ``idx`` are the HTTP headers the client sent plus, for each
input parameter, ``{<param name>: {"content-type": <its content type>}}`` (TorchServe's
layout). ``get_request_header`` tries the exact name first, then ignores case.
"""

from __future__ import annotations

from typing import Any

from .metrics import MetricsCache

__all__ = ["Context", "RequestProcessor"]

SEQUENCE_ID_HEADER = "ts_request_sequence_id"
SEQUENCE_START_HEADER = "ts_request_sequence_start"
SEQUENCE_END_HEADER = "ts_request_sequence_end"


class RequestProcessor:
    """The request headers of one request, and the response status/headers set for it."""

    __slots__ = ("_request_header", "_params", "_status_code", "_reason_phrase",
                 "_response_header")

    def __init__(self, request_header: dict | None = None, params: list | None = None) -> None:
        self._request_header = request_header if request_header is not None else {}
        self._params = params  # parameter content types are added on first read
        self._status_code = 200
        self._reason_phrase: str | None = None
        self._response_header: dict[str, str] = {}

    def _headers(self) -> dict:
        if self._params is not None:
            merged: dict[str, Any] = {p.name: {"content-type": p.content_type}
                                      for p in self._params}
            merged.update(self._request_header)
            self._request_header = merged
            self._params = None
        return self._request_header

    def get_request_property(self, key: str) -> Any:
        # Looked up without building the merged dict: BaseHandler asks for "explain" and
        # "describe" on every batch.
        headers = self._request_header
        if key in headers:
            return headers[key]
        params = self._params or ()
        for p in params:
            if p.name == key:
                return {"content-type": p.content_type}
        lowered = key.lower()
        for name, value in headers.items():
            if name.lower() == lowered:
                return value
        for p in params:
            if p.name.lower() == lowered:
                return {"content-type": p.content_type}
        return None

    def get_request_properties(self) -> dict:
        return self._headers()

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> str | None:
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_header[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return self._response_header

    def get_response_header(self, key: str) -> str | None:
        return self._response_header.get(key)


class Context:
    """Model information fixed at load time plus the current batch's requests."""

    def __init__(self, model_name: str, model_dir: str, manifest: dict | None,
                 batch_size: int, gpu: int | None, mms_version: str,
                 limit_max_image_pixels: bool = True, metrics: MetricsCache | None = None,
                 model_yaml_config: dict | None = None) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": "MMS",  # TorchServe's value; handlers may compare against it
            "server_version": mms_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids: dict[int, str] | None = None
        self._request_processor: list[RequestProcessor] | None = None
        self.metrics = metrics if metrics is not None else MetricsCache(model_name)
        self.model_yaml_config = model_yaml_config if model_yaml_config is not None else {}
        self.stopping_criteria = None  # TorchServe streaming hook; not used by dagserve
        self.cl_socket = None
        # set by the worker process: sends intermediate results (handler/streaming.py)
        self.intermediate_sender = None
        # the request headers that carry a sequence (stateful models, TorchServe's names)
        self.header_key_sequence_id = SEQUENCE_ID_HEADER
        self.header_key_sequence_start = SEQUENCE_START_HEADER
        self.header_key_sequence_end = SEQUENCE_END_HEADER

    @property
    def system_properties(self) -> dict:
        return self._system_properties

    @property
    def request_processor(self) -> list[RequestProcessor] | None:
        return self._request_processor

    @request_processor.setter
    def request_processor(self, request_processor: list[RequestProcessor] | None) -> None:
        self._request_processor = request_processor

    def _processor(self, idx: int) -> RequestProcessor:
        processors = self._request_processor
        if processors is None:
            raise RuntimeError("there is no request in progress (the context is used outside "
                               "of handle())")
        try:
            return processors[idx]
        except (IndexError, TypeError):
            raise IndexError(f"request index {idx!r} is out of range for a batch of "
                             f"{len(processors)}") from None

    def get_request_id(self, idx: int = 0) -> str | None:
        if self.request_ids is None:
            return None
        return self.request_ids.get(idx)

    def get_sequence_id(self, idx: int) -> str | None:
        """The sequence request ``idx`` belongs to (gRPC StreamPredictions2), else None."""
        return self._processor(idx).get_request_property(self.header_key_sequence_id)

    def get_request_header(self, idx: int, key: str) -> Any:
        return self._processor(idx).get_request_property(key)

    def get_trace_id(self, idx: int = 0) -> str | None:
        """The OpenTelemetry trace id (32 hex digits) of request ``idx``, from the W3C
        ``traceparent`` header the server passes on when it exports traces (or the client
        sent); None when there is none."""
        value = self.get_request_header(idx, "traceparent")
        parts = value.split("-") if isinstance(value, str) else ()
        if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
            return parts[1]
        return None

    def get_all_request_header(self, idx: int) -> dict:
        return self._processor(idx).get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx: int) -> tuple[int, str | None]:
        processor = self._processor(idx)
        return processor.get_response_status_code(), processor.get_response_status_phrase()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Set the HTTP status (and reason phrase) of request ``idx`` of the batch."""
        if self._request_processor is not None:
            self._processor(idx).report_status(code, phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self._request_processor or ():
            processor.report_status(code, phrase)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self._processor(idx).get_response_headers()

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self._processor(idx).add_response_property(key, value)
