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

    INVALID_ARGUMENT = ("INVALID_ARGUMENT", 400)
    FAILED_PRECONDITION = ("FAILED_PRECONDITION", 400)
    OUT_OF_RANGE = ("OUT_OF_RANGE", 400)
    NOT_FOUND = ("NOT_FOUND", 404)
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


# gRPC's (and TensorFlow's) numeric status codes.
_BY_NUMBER = {
    2: Code.UNKNOWN,
    3: Code.INVALID_ARGUMENT,
    4: Code.DEADLINE_EXCEEDED,
    5: Code.NOT_FOUND,
    8: Code.RESOURCE_EXHAUSTED,
    9: Code.FAILED_PRECONDITION,
    11: Code.OUT_OF_RANGE,
    12: Code.UNIMPLEMENTED,
    13: Code.INTERNAL,
    14: Code.UNAVAILABLE,
}


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
