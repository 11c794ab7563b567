"""TF Serving's REST API on the standard library's threading HTTP server.

Routes, request and response shapes follow TF Serving's `http_rest_api_handler`
and `json_tensor`:
- `GET  /v1/models/NAME[/versions/N | /labels/L]`           GetModelStatus as JSON;
- `GET  /v1/models/NAME[/versions/N | /labels/L]/metadata`  GetModelMetadata as JSON;
- `POST /v1/models/NAME[/versions/N | /labels/L]:predict`   `{"signature_name", "instances"}`
  (row format, answered `{"predictions": [...]}`) or `{"signature_name", "inputs"}`
  (columnar, answered `{"outputs": ...}`).
Every error is `{"error": "<message>"}` with the HTTP code of its gRPC status; a
body over `max_request_bytes` is refused with 413 before it is read.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from serving import predict, tensors
from serving.model_registry import ModelRegistry
from serving.status import Code, ServingError, invalid

log = logging.getLogger("seqexport.serve")

_VERSION = r"(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
_PREDICT = re.compile(r"/v1/models/([^/:]+)" + _VERSION + r":(classify|regress|predict)", re.IGNORECASE)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?" + _VERSION + r"(?:/(metadata))?", re.IGNORECASE)
DEFAULT_IDLE_TIMEOUT_S = 30.0


class RestServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the registry and limits its handlers read."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, registry: ModelRegistry, *, max_request_bytes: int,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry = registry
        self.max_request_bytes = max_request_bytes
        self.idle_timeout = idle_timeout
        super().__init__(address, _Handler)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="seqexport-rest", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RestServer
    server_version = "seqexport-serve"

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # an idle or stalled client frees its thread
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm holds
        # the body until the client's delayed ACK (40 ms on Linux) for every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    # ----- dispatch -----

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._answer(self._get)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._answer(self._post)

    def _not_allowed(self) -> tuple[int, Any]:
        self.close_connection = True  # any body it sent is left unread
        return 405, {"error": f"Method {self.command} is not allowed; the API takes GET and POST."}

    def do_PUT(self) -> None:  # noqa: N802 - stdlib name
        self._answer(self._not_allowed)

    do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_PUT  # noqa: N815

    def _answer(self, handler) -> None:
        try:
            status, body = handler()
        except ServingError as exc:
            status, body = exc.code.http_status, {"error": exc.message}
        except _TooLarge as exc:
            status, body = 413, {"error": str(exc)}
            self.close_connection = True
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return
        except Exception as exc:  # noqa: BLE001 - a request never takes the server down
            log.exception("REST request %s %s failed", self.command, self.path)
            status, body = 500, {"error": f"{type(exc).__name__}: {exc}"}
        self._send(status, body)

    def _send(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def _path(self) -> str:
        return urllib.parse.urlsplit(self.path).path.rstrip("/") or "/"

    # ----- GET: status and metadata -----

    def _get(self) -> tuple[int, Any]:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

        from serving.grpc_service import SIGNATURE_DEF_FIELD, metadata_response, status_response

        path = self._path()
        match = _STATUS.fullmatch(path)
        if not path.lower().startswith("/v1/"):
            raise ServingError(Code.NOT_FOUND, f"No such path {path!r}; the API lives under /v1/models/.")
        if match is None:
            raise invalid(f"Malformed request: GET {path}")
        name, version, label, metadata = match.groups()
        if not name:
            raise invalid("Missing model name in request.")
        name, label = _unquote(name), _unquote(label) if label else None
        if metadata:
            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
            _fill_spec(request.model_spec, name, version, label)
            response = metadata_response(self.server.registry, request)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
            return 200, {
                "model_spec": _to_dict(json_format, response.model_spec),
                "metadata": {SIGNATURE_DEF_FIELD: _to_dict(json_format, signature_map)},
            }
        request = get_model_status_pb2.GetModelStatusRequest()
        _fill_spec(request.model_spec, name, version, label)
        return 200, _to_dict(json_format, status_response(self.server.registry, request))

    # ----- POST: predict -----

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ServingError(Code.INVALID_ARGUMENT, "Chunked request bodies are not accepted; send Content-Length.")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True
            raise invalid("Missing Content-Length header.")
        try:
            length = int(length_text)
        except ValueError:
            self.close_connection = True
            raise invalid(f"Content-Length {length_text!r} is not a number.") from None
        if length < 0:
            self.close_connection = True
            raise invalid(f"Content-Length {length} is negative.")
        if length > self.server.max_request_bytes:
            raise _TooLarge(
                f"Request body of {length} bytes is over this server's limit of "
                f"{self.server.max_request_bytes} bytes (seqexport serve --max-request-bytes)."
            )
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise invalid(f"Request body ended after {len(body)} of {length} bytes.")
        return body

    def _post(self) -> tuple[int, Any]:
        path = self._path()
        body = self._read_body()
        match = _PREDICT.fullmatch(path)
        if match is None:
            raise invalid(f"Malformed request: POST {path}")
        name, version, label, method = match.groups()
        if method.lower() != "predict":
            raise ServingError(Code.UNIMPLEMENTED, f"{method} is not offered by this server; use :predict.")
        served = self.server.registry.get(
            _unquote(name), int(version) if version else None, _unquote(label) if label else None
        )
        document = _parse_json(body)
        signature_name = document.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid("'signature_name' must be a string.")
        view = predict.signature_view(served, signature_name)
        row = "instances" in document
        if row == ("inputs" in document):
            raise invalid("The request needs exactly one of the keys 'instances' (row format) or 'inputs' (columnar).")
        arrays = _from_instances(document["instances"], view) if row else _from_inputs(document["inputs"], view)
        _, outputs = predict.run(served, view.name, arrays)
        return 200, (_as_predictions(outputs) if row else _as_outputs(outputs))


class _TooLarge(Exception):
    pass


def _unquote(text: str) -> str:
    return urllib.parse.unquote(text)


def _fill_spec(model_spec, name: str, version: str | None, label: str | None) -> None:
    model_spec.name = name
    if version:
        model_spec.version.value = int(version)
    elif label:
        model_spec.version_label = label


def _to_dict(json_format, message) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _parse_json(body: bytes) -> dict:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, absurd nesting
        raise invalid(f"JSON Parse error: {str(exc)[:200] or type(exc).__name__}") from None
    if not isinstance(document, dict):
        raise invalid(f"The request body must be a JSON object; got {type(document).__name__}.")
    return document


def _from_instances(instances: Any, view) -> dict[str, np.ndarray]:
    """Row format: one entry per batch element; named objects when the signature has several inputs."""
    if not isinstance(instances, list):
        raise invalid("Expecting 'instances' to be a list.")
    if not instances:
        raise invalid("No values in 'instances' list.")
    named = isinstance(instances[0], dict)
    if not named:
        if len(view.inputs) != 1:
            raise invalid(
                f"'instances' is a plain list, but signature {view.name!r} takes several inputs "
                f"{sorted(view.inputs)}: send a list of objects."
            )
        key = next(iter(view.inputs))
        if any(isinstance(item, dict) for item in instances):
            raise invalid("'instances' mixes objects and values; use one form.")
        return {key: tensors.from_json(key, instances, view.inputs[key])}
    keys = set(instances[0])
    for index, item in enumerate(instances):
        if not isinstance(item, dict):
            raise invalid(f"Expecting an object at item {index} of 'instances', got {type(item).__name__}.")
        if set(item) != keys:
            raise invalid(
                f"item {index} of 'instances' has keys {sorted(item)}; item 0 has {sorted(keys)}. "
                "Every item names the same inputs."
            )
    unknown = sorted(keys - set(view.inputs))
    if unknown:
        raise invalid(f"inputs {unknown} are not inputs of signature {view.name!r}; it takes {sorted(view.inputs)}.")
    return {key: tensors.from_json(key, [item[key] for item in instances], view.inputs[key]) for key in keys}


def _from_inputs(inputs: Any, view) -> dict[str, np.ndarray]:
    """Columnar format: one value per input (an object of them, or the value when there is one input)."""
    if not isinstance(inputs, dict):
        if len(view.inputs) != 1:
            raise invalid(
                f"'inputs' is a plain value/list, but signature {view.name!r} takes several inputs "
                f"{sorted(view.inputs)}: send an object."
            )
        key = next(iter(view.inputs))
        return {key: tensors.from_json(key, inputs, view.inputs[key])}
    unknown = sorted(set(inputs) - set(view.inputs))
    if unknown:
        raise invalid(f"inputs {unknown} are not inputs of signature {view.name!r}; it takes {sorted(view.inputs)}.")
    return {key: tensors.from_json(key, value, view.inputs[key]) for key, value in inputs.items()}


def _as_predictions(outputs: dict[str, np.ndarray]) -> dict:
    batch = None
    for key, array in outputs.items():
        if array.ndim == 0:
            raise invalid(f"output {key!r} is a scalar: it has no batch dimension; ask in the columnar format ('inputs').")
        if batch is not None and array.shape[0] != batch:
            raise invalid(f"output {key!r} has batch size {array.shape[0]}, expecting {batch}; use the columnar format.")
        batch = array.shape[0]
    if len(outputs) == 1:
        return {"predictions": tensors.to_json(next(iter(outputs.values())))}
    lists = {key: tensors.to_json(array) for key, array in outputs.items()}
    return {"predictions": [{key: lists[key][i] for key in lists} for i in range(batch or 0)]}


def _as_outputs(outputs: dict[str, np.ndarray]) -> dict:
    if len(outputs) == 1:
        return {"outputs": tensors.to_json(next(iter(outputs.values())))}
    return {"outputs": {key: tensors.to_json(array) for key, array in outputs.items()}}
