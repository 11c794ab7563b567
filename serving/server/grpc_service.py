"""TF Serving's gRPC API: `PredictionService` (Predict, GetModelMetadata) and `ModelService.GetModelStatus`.

The servicers subclass the classes `tensorflow-serving-api` generates, so the
methods this server does not offer (Classify, Regress, MultiInference,
HandleReloadConfigRequest) answer UNIMPLEMENTED exactly as the stubs define.
A request's `ServingError` becomes its status; any other exception becomes
INTERNAL with the exception's text, and the server keeps serving. Request bytes
are parsed inside the handler (`_ParsedInHandler`), so a body that is not the
method's message is INVALID_ARGUMENT, not the INTERNAL gRPC answers by itself.
"""

from __future__ import annotations

import functools
import logging

import grpc
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import tensors
from serving.server import predict
from serving.server.registry import ModelRegistry
from serving.server.served import ServedVersion
from serving.status import ServingError, invalid

log = logging.getLogger("seqexport.serve")

SIGNATURE_DEF_FIELD = "signature_def"


def _answers_errors(method):
    """Turns a `ServingError` (or any bug) into the call's gRPC status."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code.grpc_name), exc.message)
        except Exception as exc:  # noqa: BLE001 - a request never takes the server down
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    return wrapper


def _version_of(model_spec) -> tuple[int | None, str | None]:
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return model_spec.version.value, None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def _served(registry: ModelRegistry, request) -> ServedVersion:
    if not request.HasField("model_spec") or not request.model_spec.name:
        raise invalid("Missing ModelSpec: set model_spec.name.")
    version, label = _version_of(request.model_spec)
    return registry.get(request.model_spec.name, version, label)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over the models of a `ModelRegistry`."""

    def __init__(self, registry: ModelRegistry, *, max_request_bytes: int, tensor_content: bool = False):
        self.registry = registry
        self.max_request_bytes = max_request_bytes
        self.tensor_content = tensor_content

    @_answers_errors
    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        served = _served(self.registry, request)
        arrays = {
            key: tensors.from_tensor_proto(key, proto, max_bytes=self.max_request_bytes)
            for key, proto in request.inputs.items()
        }
        signature, outputs = predict.run(served, request.model_spec.signature_name, arrays,
                                         list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = served.name
        response.model_spec.version.value = served.version
        response.model_spec.signature_name = signature
        for key, array in outputs.items():
            response.outputs[key].CopyFrom(tensors.to_tensor_proto(array, as_content=self.tensor_content))
        return response

    @_answers_errors
    def GetModelMetadata(self, request, context):  # noqa: N802 - gRPC method name
        return metadata_response(self.registry, request)


def metadata_response(registry: ModelRegistry, request):
    """GetModelMetadataResponse for a request (shared with the REST front end)."""
    if not request.metadata_field:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field.")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid(f"Metadata field {field!r} is not supported; the only one is {SIGNATURE_DEF_FIELD!r}.")
    served = _served(registry, request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in served.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature_def)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = served.name
    response.model_spec.version.value = served.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response


def status_response(registry: ModelRegistry, request):
    """GetModelStatusResponse for a request (shared with the REST front end).

    `model_spec.version_label` is ignored, as get_model_status_impl.cc ignores it.
    """
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
    version = request.model_spec.version.value if request.model_spec.HasField("version") else None
    response = get_model_status_pb2.GetModelStatusResponse()
    for row in registry.status(request.model_spec.name, version):
        status = response.model_version_status.add()
        status.version = row.version
        status.state = row.state.value
        status.status.error_code = row.error_code or (error_codes_pb2.UNKNOWN if row.error else error_codes_pb2.OK)
        status.status.error_message = row.error
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus over the models of a `ModelRegistry`."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    @_answers_errors
    def GetModelStatus(self, request, context):  # noqa: N802 - gRPC method name
        return status_response(self.registry, request)


class _ParsedInHandler(grpc.GenericRpcHandler):
    """A service's handlers, with the request parsed in the handler instead of by gRPC.

    gRPC deserializes a request before any handler runs and answers a body that
    does not parse with INTERNAL ("Exception deserializing request!"), as TF
    Serving's C++ server does. That is the client's mistake, so these handlers
    take the raw bytes and answer INVALID_ARGUMENT naming the expected message.
    """

    def __init__(self, inner: grpc.GenericRpcHandler):
        self._inner = inner
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._wrap(self._inner.service(handler_call_details))
            if handler is not None:  # only this service's methods: a flood of made-up names stores nothing
                self._handlers[method] = handler
        return handler

    @staticmethod
    def _wrap(handler):
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        parse, behaviour = handler.request_deserializer, handler.unary_unary
        message = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        message_name = message.full_name if message is not None else "request"

        def parsed(raw: bytes, context):
            try:
                request = parse(raw)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or anything a bad body raises
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"The request body is not a valid {message_name} ({exc}); send a serialized {message_name}.",
                )
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            parsed, request_deserializer=None, response_serializer=handler.response_serializer
        )


class _Collect:
    """Stands in for a `grpc.Server` to collect the handlers a generated `add_*_to_server` registers."""

    def __init__(self):
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service_name, method_handlers) -> None:
        self.handlers.append(grpc.method_handlers_generic_handler(service_name, method_handlers))


def add_services(server: grpc.Server, registry: ModelRegistry, *, max_request_bytes: int,
                 tensor_content: bool = False) -> None:
    collect = _Collect()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(registry, max_request_bytes=max_request_bytes, tensor_content=tensor_content), collect
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), collect)
    server.add_generic_rpc_handlers(tuple(_ParsedInHandler(handler) for handler in collect.handlers))
