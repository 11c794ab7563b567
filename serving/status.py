"""The error a served request can end with, and its gRPC status and HTTP code.

One `ServingError` is raised wherever a request goes wrong (model lookup,
input checks, the model run); the gRPC service turns it into a status with
`context.abort`, the REST handler into TF Serving's `{"error": "..."}` body.
Pure Python: no gRPC or TensorFlow import, so both front ends share it.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """A gRPC status code name and the HTTP status TF Serving's REST API maps it to.

    The HTTP codes follow TF Serving's `ToHTTPStatusCode` (model_servers/http_server.cc);
    a request body over the size limit is answered 413 by the REST front end
    itself, before any JSON is parsed.
    """

    CANCELLED = ("CANCELLED", 499)
    INVALID_ARGUMENT = ("INVALID_ARGUMENT", 400)
    FAILED_PRECONDITION = ("FAILED_PRECONDITION", 400)
    OUT_OF_RANGE = ("OUT_OF_RANGE", 400)
    NOT_FOUND = ("NOT_FOUND", 404)
    ALREADY_EXISTS = ("ALREADY_EXISTS", 409)
    PERMISSION_DENIED = ("PERMISSION_DENIED", 403)
    ABORTED = ("ABORTED", 409)
    UNAUTHENTICATED = ("UNAUTHENTICATED", 401)
    DATA_LOSS = ("DATA_LOSS", 500)
    RESOURCE_EXHAUSTED = ("RESOURCE_EXHAUSTED", 429)
    UNIMPLEMENTED = ("UNIMPLEMENTED", 501)
    UNAVAILABLE = ("UNAVAILABLE", 503)
    DEADLINE_EXCEEDED = ("DEADLINE_EXCEEDED", 504)
    INTERNAL = ("INTERNAL", 500)
    UNKNOWN = ("UNKNOWN", 500)

    @property
    def grpc_name(self) -> str:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]

    @classmethod
    def from_grpc_value(cls, value: int) -> "Code":
        """The code for a numeric gRPC/TensorFlow status (`tf.errors.OpError.error_code`)."""
        return _BY_NUMBER.get(value, cls.UNKNOWN)

    @property
    def number(self) -> int:
        """The numeric code (`tensorflow.error.Code`, as `ModelVersionStatus.status.error_code` holds it)."""
        return _NUMBER_BY_CODE[self]


# gRPC's (and TensorFlow's) numeric status codes.
_BY_NUMBER = {
    1: Code.CANCELLED,
    2: Code.UNKNOWN,
    3: Code.INVALID_ARGUMENT,
    4: Code.DEADLINE_EXCEEDED,
    5: Code.NOT_FOUND,
    6: Code.ALREADY_EXISTS,
    7: Code.PERMISSION_DENIED,
    8: Code.RESOURCE_EXHAUSTED,
    9: Code.FAILED_PRECONDITION,
    10: Code.ABORTED,
    11: Code.OUT_OF_RANGE,
    12: Code.UNIMPLEMENTED,
    13: Code.INTERNAL,
    14: Code.UNAVAILABLE,
    15: Code.DATA_LOSS,
    16: Code.UNAUTHENTICATED,
}
_NUMBER_BY_CODE = {code: number for number, code in _BY_NUMBER.items()}


class ServingError(Exception):
    """A request the server answers with an error status; the server itself carries on."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.grpc_name}: {self.message}"


def invalid(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, message)


def code_of(exc: BaseException) -> Code:
    """The status TF Serving reports for an exception raised while loading a version.

    TensorFlow's own errors keep their code (a missing variables file is
    NOT_FOUND, a truncated one DATA_LOSS or OUT_OF_RANGE), a `SavedModel` file
    that does not parse is DATA_LOSS (TensorFlow's `ReadBinaryProto`), a missing
    file NOT_FOUND; anything else UNKNOWN.
    """
    if isinstance(exc, ServingError):
        return exc.code
    error_code = getattr(exc, "error_code", None)  # tf.errors.OpError, without importing TF here
    if isinstance(error_code, int) and type(exc).__module__.startswith("tensorflow"):
        return Code.from_grpc_value(error_code)
    if isinstance(exc, FileNotFoundError):
        return Code.NOT_FOUND
    if type(exc).__name__ == "DecodeError":  # google.protobuf.message.DecodeError
        return Code.DATA_LOSS
    if isinstance(exc, PermissionError):
        return Code.PERMISSION_DENIED
    return Code.UNKNOWN
