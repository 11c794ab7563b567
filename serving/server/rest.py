"""TF Serving's REST API on aiohttp's HTTP server.

Routes, request and response shapes follow TF Serving's
model_servers/http_rest_api_handler.cc, http_rest_api_util.cc and
util/json_tensor.cc:
- `GET  /v1/models/NAME[/versions/N | /labels/L]`           GetModelStatus as JSON;
- `GET  /v1/models/NAME[/versions/N | /labels/L]/metadata`  GetModelMetadata as JSON;
- `POST /v1/models/NAME[/versions/N | /labels/L]:predict`   `{"signature_name", "instances"}`
  (row format, answered `{"predictions": [...]}`) or `{"signature_name", "inputs"}`
  (columnar, answered `{"outputs": ...}`).
Paths match TF Serving's regular expressions exactly (case-insensitive, no
trailing slash); any other request under `/v1/` is 400 "Malformed request".
Every error is `{"error": "<message>"}` with the HTTP code of its gRPC status
(http_server.cc's `ToHTTPStatusCode`).

The server: one asyncio event loop in its own thread reads and writes every
connection (a listen backlog of `backlog`, HTTP/1.1 keep-alive), and the
requests run on a bounded pool of `workers` threads, as TF Serving runs them
on `--rest_api_num_threads`. At most `max_connections` connections are served
at once; a request arriving on a connection over that is answered 503
(UNAVAILABLE) and the connection closed, never reset. A body over
`max_request_bytes` is refused with 413 from its headers, before it is read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import re
import threading
import urllib.parse
from typing import Any

import numpy as np
from google.protobuf import json_format

from serving import tensors
from serving.server import predict
from serving.server.registry import ModelRegistry
from serving.status import Code, ServingError, invalid

log = logging.getLogger("seqexport.serve")

# http_rest_api_util.cc's kPredictionApiGegex and kModelStatusApiRegex; http_server.cc routes `/v1/.*` here.
_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                     re.IGNORECASE)
_API = re.compile(r"/v1/.*", re.IGNORECASE)
_INT64_MAX = 2**63 - 1
DEFAULT_BACKLOG = 1024
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_KEEPALIVE_S = 75.0
_LINGER_S = 1.0
# TF Serving's default --rest_api_num_threads is 4 x the schedulable CPUs (server.h).
DEFAULT_WORKERS = 4 * (os.cpu_count() or 1)


class RestServer:
    """TF Serving's REST API over a registry, served by aiohttp in a thread of its own.

    Args:
        address: (host, port) to bind; port 0 picks a free one (`port` has it after `start()`).
        registry: the models.
        max_request_bytes: largest request body (413 over it).
        workers: threads that run requests.
        max_connections: connections served at once (503 over it).
        backlog: the listen socket's backlog.
        keepalive_s: how long an idle keep-alive connection stays open.
    """

    def __init__(self, address: tuple[str, int], registry: ModelRegistry, *, max_request_bytes: int,
                 workers: int = DEFAULT_WORKERS, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 backlog: int = DEFAULT_BACKLOG, keepalive_s: float = DEFAULT_KEEPALIVE_S):
        for field, value in (("workers", workers), ("max_connections", max_connections), ("backlog", backlog)):
            if value < 1:
                raise ValueError(f"`{field}` must be positive. Got: {value}")
        self.host, self.requested_port = address
        self.registry = registry
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self.backlog = backlog
        self.keepalive_s = keepalive_s
        self.port: int | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seqexport-rest")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle -----

    def start(self) -> "RestServer":
        """Binds the port and serves in a background thread.

        Raises:
            OSError: the port cannot be bound.
        """
        ready = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="seqexport-rest-loop", daemon=True)
        self._thread.start()
        self.port = ready.result(timeout=60)  # re-raises the bind error
        return self

    def _serve(self, ready: concurrent.futures.Future) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._bind())
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            ready.set_exception(OSError(f"cannot bind REST to {self.host}:{self.requested_port}: {exc}"))
            loop.close()
            return
        ready.set_result(self._bound_port)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _bind(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=self.max_request_bytes, middlewares=[self._connection_limit])
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # lingering_time: after a 413, the unread body is drained this long, then the connection is
        # closed (closing with unread bytes would reset it, and the client might lose the answer).
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.keepalive_s,
                                     handle_signals=False, lingering_time=_LINGER_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port, backlog=self.backlog,
                           reuse_address=True)
        await site.start()
        self._bound_port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._loop = self._thread = None

    def open_connections(self) -> int:
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    # ----- aiohttp side -----

    @property
    def _connection_limit(self):
        from aiohttp import web

        @web.middleware
        async def limit(request, handler):
            if self.open_connections() > self.max_connections:
                response = _response(503, {"error": (
                    f"The server has {self.max_connections} connections open, its limit "
                    "(seqexport serve --rest-max-connections); retry shortly.")})
                response.force_close()
                return response
            return await handler(request)

        return limit

    async def _handle(self, request):
        method = request.method
        path = request.raw_path.split("?", 1)[0]
        if not _API.fullmatch(path):
            return _response(404, {"error": f"No such path {path!r}; the API lives under /v1/models/."})
        if method == "OPTIONS":  # http_server.cc: a CORS preflight needs an Origin
            if re.search(r"https?://", request.headers.get("Origin", "")):
                return _response(200, None)
            return _response(400, {"error": "Origin header is missing in CORS preflight"})
        body = b""
        if method == "POST":
            length = request.content_length
            if length is not None and length > self.max_request_bytes:
                response = _response(413, {"error": (
                    f"Request body of {length} bytes is over this server's limit of {self.max_request_bytes} "
                    "bytes (seqexport serve --max-request-bytes).")})
                response.force_close()  # the body is never read
                return response
            if length is None and "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
                return _response(400, {"error": "JSON Parse error: The document is empty (the request has no "
                                                "Content-Length header and no body)."})
            from aiohttp import web

            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                response = _response(413, {"error": (f"Request body is over this server's limit of "
                                                     f"{self.max_request_bytes} bytes (seqexport serve "
                                                     "--max-request-bytes).")})
                response.force_close()
                return response
        loop = asyncio.get_running_loop()
        try:
            status, text = await loop.run_in_executor(self._pool, self.process, method, path, body)
        except RuntimeError:  # the pool is shut down: the server is stopping
            return _response(503, {"error": "The server is stopping."})
        return _response(status, text)

    # ----- the request itself (a worker thread) -----

    def process(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        """(HTTP status, JSON text) for one request, as TF Serving's `ProcessRequest` answers it."""
        try:
            return 200, self._dispatch(method, path, body)
        except ServingError as exc:
            return exc.code.http_status, json.dumps({"error": exc.message})
        except Exception as exc:  # noqa: BLE001 - a request never takes the server down
            log.exception("REST request %s %s failed", method, path)
            return 500, json.dumps({"error": f"{type(exc).__name__}: {exc}"})

    def _dispatch(self, method: str, path: str, body: bytes) -> str:
        malformed = invalid(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICT.fullmatch(path)
        elif method == "GET":
            match = _STATUS.fullmatch(path)
        else:
            raise malformed
        if match is None:
            raise malformed
        name, version, label, verb = match.groups()
        name = _unquote(name) if name else ""
        version_number = _version(version)
        label = _unquote(label) if label else None
        if method == "POST":
            if verb.lower() != "predict":
                raise ServingError(Code.UNIMPLEMENTED, f"{verb} is not offered by this server; use :predict.")
            return self._predict(name, version_number, label, body)
        if not name:
            raise invalid("Missing model name in request.")
        return self._get(name, version_number, label, bool(verb))

    def _get(self, name: str, version: int | None, label: str | None, metadata: bool) -> str:
        from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

        from serving.server.grpc_service import SIGNATURE_DEF_FIELD, metadata_response, status_response

        if metadata:
            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
            _fill_spec(request.model_spec, name, version, label)
            response = metadata_response(self.registry, request)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
            return json.dumps({
                "model_spec": _to_dict(json_format, response.model_spec),
                "metadata": {SIGNATURE_DEF_FIELD: _to_dict(json_format, signature_map)},
            })
        request = get_model_status_pb2.GetModelStatusRequest()
        _fill_spec(request.model_spec, name, version, label)
        return json.dumps(_to_dict(json_format, status_response(self.registry, request)))

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        # json_tensor.cc's FillPredictRequestFromJson: parse, signature_name, then the model's signature.
        document = _parse_json(body)
        signature_name = document.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid("'signature_name' key must be a string value.")
        served = self.registry.get(name, version, label)
        view = predict.signature_view(served, signature_name, rest=True)
        if "instances" in document:
            if "inputs" in document:
                raise invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist.")
            arrays, row = _from_instances(document["instances"], view), True
        elif "inputs" in document:
            arrays, row = _from_inputs(document["inputs"], view), False
        else:
            raise invalid("Missing 'inputs' or 'instances' key")
        _, outputs = predict.run(served, view.name, arrays)
        return _as_predictions(outputs) if row else _as_outputs(outputs)


def _response(status: int, body: Any):
    from aiohttp import web

    text = body if isinstance(body, str) else ("" if body is None else json.dumps(body))
    return web.Response(status=status, text=text, content_type="application/json")


def _unquote(text: str) -> str:
    return urllib.parse.unquote(text)


def _version(text: str | None) -> int | None:
    """http_rest_api_util.cc's `ParseModelInfo`: a version that is no int64 is INVALID_ARGUMENT."""
    if not text:
        return None
    number = int(text)  # the regex allows digits only
    if number > _INT64_MAX:
        raise invalid(f"Failed to convert version: {text} to numeric.")
    return number


def _fill_spec(model_spec, name: str, version: int | None, label: str | None) -> None:
    model_spec.name = name
    if version is not None:
        model_spec.version.value = version
    elif label:
        model_spec.version_label = label


def _to_dict(json_format, message) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _parse_json(body: bytes) -> dict:
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, absurd nesting
        raise invalid(f"JSON Parse error: {str(exc)[:200] or type(exc).__name__}") from None
    if not isinstance(document, dict):
        raise invalid(f"JSON Value: {body[:256].decode(errors='replace')} Is not object "
                      f"(the request body must be a JSON object; got {type(document).__name__}).")
    return document


def _is_named(item: Any) -> bool:
    return isinstance(item, dict) and not tensors.is_base64_object(item)


def _from_instances(instances: Any, view) -> dict[str, np.ndarray]:
    """Row format (json_tensor.cc's `FillTensorMapFromInstancesList`): one entry per batch element."""
    if not isinstance(instances, list):
        raise invalid("Expecting 'instances' to be an list/array")
    if not instances:
        raise invalid("No values in 'instances' array")
    if not _is_named(instances[0]):
        if len(view.inputs) != 1:
            raise invalid(
                f"instances is a plain list, but expecting list of objects as multiple input tensors required "
                f"as per tensorinfo_map: signature {view.name!r} takes {sorted(view.inputs)}."
            )
        key = next(iter(view.inputs))
        for index, item in enumerate(instances):
            if _is_named(item):
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
        return {key: tensors.from_json(key, instances, view.inputs[key])}
    keys = set(view.inputs)
    for index, item in enumerate(instances):
        if not _is_named(item):
            raise invalid(f"Expecting object but got list at item {index} of input list")
        unknown = sorted(set(item) - keys)
        if unknown:
            raise invalid(f"Failed to process element: {index} key: {unknown[0]} of 'instances' list. "
                          f"JSON object: does not have named input: {unknown[0]} "
                          f"(signature {view.name!r} takes {sorted(keys)}).")
        if set(item) != keys:
            raise invalid(f"Failed to process element: {index} of 'instances' list: keys must be equal to: "
                          f"{','.join(sorted(keys))} (missing {sorted(keys - set(item))}).")
    return {key: tensors.from_json(key, [item[key] for item in instances], view.inputs[key]) for key in keys}


def _from_inputs(inputs: Any, view) -> dict[str, np.ndarray]:
    """Columnar format (json_tensor.cc's `FillTensorMapFromInputsMap`): keys the signature does not take are ignored."""
    if not _is_named(inputs):
        if len(view.inputs) != 1:
            raise invalid(
                f"inputs is a plain value/list, but expecting an object as multiple input tensors required as "
                f"per tensorinfo_map: signature {view.name!r} takes {sorted(view.inputs)}."
            )
        key = next(iter(view.inputs))
        return {key: tensors.from_json(key, inputs, view.inputs[key])}
    arrays = {}
    for key, sig in view.inputs.items():
        if key not in inputs:
            raise invalid(f"Missing named input: {key} in 'inputs' object (signature {view.name!r} takes "
                          f"{sorted(view.inputs)}).")
        arrays[key] = tensors.from_json(key, inputs[key], sig)
    return arrays


def _as_predictions(outputs: dict[str, np.ndarray]) -> str:
    """json_tensor.cc's `MakeRowFormatJsonFromTensors`."""
    batch = None
    for key, array in outputs.items():
        if array.ndim == 0:
            raise invalid(f"Tensor name: {key} has no shape information (a scalar; ask in the columnar "
                          "format, 'inputs').")
        if batch is not None and array.shape[0] != batch:
            raise invalid(f"Tensor name: {key} has inconsistent batch size: {array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    if len(outputs) == 1:
        ((key, array),) = outputs.items()
        return '{"predictions": [' + ", ".join(tensors.json_text(key, row) for row in array) + "]}"
    rows = []
    for index in range(batch or 0):
        rows.append("{" + ", ".join(json.dumps(key) + ": " + tensors.json_text(key, array[index])
                                    for key, array in outputs.items()) + "}")
    return '{"predictions": [' + ", ".join(rows) + "]}"


def _as_outputs(outputs: dict[str, np.ndarray]) -> str:
    """json_tensor.cc's `MakeColumnarFormatJsonFromTensors`."""
    if len(outputs) == 1:
        ((key, array),) = outputs.items()
        return '{"outputs": ' + tensors.json_text(key, array) + "}"
    return '{"outputs": {' + ", ".join(json.dumps(key) + ": " + tensors.json_text(key, array)
                                       for key, array in outputs.items()) + "}}"
