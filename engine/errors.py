"""dagserve's exception types. Each one that reaches HTTP carries its status, and its body is
TorchServe's shape: ``{"code": status, "type": ExceptionName, "message": text}``."""

from __future__ import annotations

import json


class DagserveError(Exception):
    status = 500
    type_name: str | None = None  # the "type" field; defaults to the class name

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def body(self) -> bytes:
        return error_body(self.status, self.type_name or type(self).__name__, self.message)


def error_body(status: int, type_name: str, message: str) -> bytes:
    return json.dumps({"code": status, "type": type_name, "message": message},
                      indent=2).encode()


class ConfigError(DagserveError):
    status = 500


class BadRequestError(DagserveError):
    status = 400


class ModelNotFoundError(DagserveError):
    status = 404
    type_name = "ModelNotFoundException"


class WorkflowNotFoundError(DagserveError):
    status = 404
    type_name = "WorkflowNotFoundException"


class ResourceNotFoundError(DagserveError):
    status = 404
    type_name = "ResourceNotFoundException"

    def __init__(self, message: str = "Requested resource is not found, please refer to API document."):
        super().__init__(message)


class MethodNotAllowedError(DagserveError):
    status = 405
    type_name = "MethodNotAllowedException"

    def __init__(self, message: str = "Requested method is not allowed, please refer to API document."):
        super().__init__(message)


class ConflictError(DagserveError):
    status = 409
    type_name = "ConflictStatusException"


class ForbiddenError(DagserveError):
    status = 403
    type_name = "InvalidModelVersionException"


class RequestTooLargeError(DagserveError):
    status = 413
    type_name = "RequestEntityTooLargeException"


class ServiceUnavailableError(DagserveError):
    status = 503
    type_name = "ServiceUnavailableException"


class InternalServerError(DagserveError):
    status = 500
    type_name = "InternalServerException"


class TokenAuthError(DagserveError):
    status = 400
    type_name = "InvalidKeyException"

    def __init__(self, message: str = ("Token Authorization failed. Token either incorrect, "
                                       "expired, or not provided correctly")):
        super().__init__(message)


class WorkerError(DagserveError):
    """A worker died, timed out or could not start while it held a request."""

    status = 500
    type_name = "InternalServerException"


class PredictionError(DagserveError):
    """A handler's error reply (PredictionException, bad output, ...), status from the worker."""

    type_name = "PredictionException"
