"""Clients for TF Serving's gRPC and REST APIs, and `Backend`s that stream through them.

Both clients own their connection (use them as context managers), take every
timeout as a named argument defaulting to `DEFAULT_TIMEOUT_S`, and build
requests as TF Serving's own examples do (`request.model_spec.signature_name`,
`request.inputs[key].CopyFrom(tf.make_tensor_proto(x))`). Tensor keys come from
the model's metadata (`SequenceKeys`), never from literals, so the same code
streams any seqexport export, against `seqexport serve` or TF Serving itself.

The state of a stream lives with the client (`serving.session.StreamingSession`):
every chunk carries it in and out, so any replica behind a load balancer can
answer any chunk, and a session survives a server restart.

Example:
    >>> with GrpcClient("127.0.0.1:8500") as client:
    ...     session = StreamingSession(client.backend("demo"), batch_size=1)
    ...     for chunk in chunks:                   # [1, T, F] each
    ...         outputs = session.feed(chunk)
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from exporter.artifact.specs import SignatureName
from serving.server import predict
from serving.server.registry import State, VersionStatus, load_version
from serving.session import context_feed, sequence_feed, static_feed
from serving.signatures import SequenceKeys, SignatureView, views_from_signature_defs
from serving.status import Code, ServingError

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_WAIT_S = 60.0
# Responses (and requests) up to this size; gRPC's own default is 4 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_UNPINNED_METADATA_TTL_S = 1.0
_HTTP_TO_CODE = {400: Code.INVALID_ARGUMENT, 404: Code.NOT_FOUND, 413: Code.RESOURCE_EXHAUSTED,
                 429: Code.RESOURCE_EXHAUSTED, 501: Code.UNIMPLEMENTED, 503: Code.UNAVAILABLE,
                 504: Code.DEADLINE_EXCEEDED}


def _error_code(name) -> int:
    """`error_code` of a status row in JSON (the enum's name, as TF Serving's JSON writes it)."""
    from tensorflow.core.protobuf import error_codes_pb2

    if isinstance(name, int):
        return name
    try:
        return error_codes_pb2.Code.Value(name)
    except ValueError:
        return error_codes_pb2.UNKNOWN


class ClientError(ServingError):
    """The server refused a request: `code` is its status, `http_status` the REST code (or None)."""

    def __init__(self, code: Code, message: str, http_status: int | None = None):
        super().__init__(code, message)
        self.http_status = http_status


# ----------------------------------------------------------------------------- gRPC


class GrpcClient:
    """TF Serving's gRPC API over one channel.

    Args:
        target: `host:port` of the server.
        timeout: default deadline of each call, in seconds.
        max_message_bytes: largest message sent or received.
    """

    def __init__(self, target: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            target,
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.max_send_message_length", max_message_bytes)],
        )
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None):
        import grpc

        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            code = Code.__members__.get(exc.code().name, Code.UNKNOWN)
            raise ClientError(code, exc.details() or exc.code().name) from None

    @staticmethod
    def _spec(model_spec, model: str, version: int | None, label: str | None, signature: str = "") -> None:
        model_spec.name = model
        if version is not None:
            model_spec.version.value = version
        elif label:
            model_spec.version_label = label
        if signature:
            model_spec.signature_name = signature

    def predict(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        signature: str = SignatureName.PREDICT.value,
        version: int | None = None,
        label: str | None = None,
        output_filter: Sequence[str] = (),
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs `signature` on `inputs` (by tensor key); returns its outputs by key."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, label, signature)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
        request.output_filter.extend(output_filter)
        response = self._call(self._predictions.Predict, request, timeout)
        return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None,
                 timeout: float | None = None) -> tuple[int, dict[str, SignatureView]]:
        """(version served, its signatures) from GetModelMetadata."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version, label)
        response = self._call(self._predictions.GetModelMetadata, request, timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return response.model_spec.version.value, views_from_signature_defs(signature_map.signature_def)

    def status(self, model: str, *, version: int | None = None, label: str | None = None,
               timeout: float | None = None) -> list[VersionStatus]:
        """GetModelStatus: every version the server knows of `model` (or one)."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, label)
        response = self._call(self._models.GetModelStatus, request, timeout)
        return [
            VersionStatus(version=row.version, state=State(row.state), error=row.status.error_message,
                          error_code=row.status.error_code)
            for row in response.model_version_status
        ]

    def wait_until_available(self, model: str, *, version: int | None = None,
                             timeout: float = DEFAULT_WAIT_S) -> int:
        """Polls GetModelStatus until `model` (or that version) is AVAILABLE; returns the version."""
        return _wait(lambda: self.status(model, version=version, timeout=min(self.timeout, timeout)),
                     model, version, timeout)

    def backend(self, model: str, *, version: int | None = None, label: str | None = None,
                pin: bool = True, timeout: float | None = None) -> "RemoteBackend":
        """A `Backend` streaming through this client; see `RemoteBackend`."""
        served, views = self.metadata(model, version=version, label=label, timeout=timeout)
        if pin:
            version, label = served, None
        call = lambda signature, inputs: self.predict(  # noqa: E731
            model, inputs, signature=signature, version=version, label=label, timeout=timeout
        )
        return RemoteBackend(call, views, version=served)


# ----------------------------------------------------------------------------- REST


class RestClient:
    """TF Serving's REST API over keep-alive HTTP connections (one per thread).

    Args:
        url: `http://host:port` of the server.
        timeout: default timeout of each request, in seconds.
        format: `"columnar"` (`inputs` / `outputs`) or `"row"` (`instances` / `predictions`).
        connection_per_request: open a new connection for every request (`Connection: close`)
            and never resend one; a reset then reaches the caller (what load tests count).
    """

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT_S, format: str = "columnar",  # noqa: A002
                 connection_per_request: bool = False):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"`url` must look like http://host:port. Got: {url!r}")
        if format not in ("columnar", "row"):
            raise ValueError(f"`format` must be 'columnar' or 'row'. Got: {format!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.format = format
        self.connection_per_request = connection_per_request
        self._host, self._port = parts.hostname, parts.port
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        # (model, version, label) -> (fetched at, signatures); see `_signature`.
        self._views: dict[tuple, tuple[float, dict[str, SignatureView]]] = {}

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def __enter__(self) -> "RestClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = _NoDelayConnection(self._host, self._port, timeout=timeout)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def request(self, method: str, path: str, body: dict | None = None, *, timeout: float | None = None) -> dict:
        """One JSON request; returns the decoded body or raises `ClientError` with the server's message.

        Requests carry their whole state, so one lost to a closed keep-alive
        connection is sent again once, on a new connection.
        """
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        timeout = self.timeout if timeout is None else timeout
        if self.connection_per_request:  # one TCP connection per request, never retried (load tests)
            connection = _NoDelayConnection(self._host, self._port, timeout=timeout)
            try:
                connection.request(method, path, body=payload, headers={**headers, "Connection": "close"})
                response = connection.getresponse()
                data = response.read()
            finally:
                connection.close()
            return self._decode(response, data)
        for attempt in (1, 2):
            connection = self._connection(timeout)
            try:
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                connection.close()
                if attempt == 2:
                    raise
        if response.will_close:
            connection.close()
        return self._decode(response, data)

    @staticmethod
    def _decode(response, data: bytes) -> dict:
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"error": data[:200].decode(errors="replace")}
        if response.status != 200:
            message = decoded.get("error", "") if isinstance(decoded, dict) else str(decoded)
            raise ClientError(_HTTP_TO_CODE.get(response.status, Code.UNKNOWN),
                              message or f"HTTP {response.status}", http_status=response.status)
        return decoded

    @staticmethod
    def _model_path(model: str, version: int | None, label: str | None) -> str:
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label:
            path += f"/labels/{urllib.parse.quote(label, safe='')}"
        return path

    def status(self, model: str, *, version: int | None = None, label: str | None = None,
               timeout: float | None = None) -> list[VersionStatus]:
        body = self.request("GET", self._model_path(model, version, label), timeout=timeout)
        return [
            VersionStatus(version=int(row["version"]), state=State[row["state"]],
                          error=row.get("status", {}).get("error_message", ""),
                          error_code=_error_code(row.get("status", {}).get("error_code", "OK")))
            for row in body.get("model_version_status", [])
        ]

    def wait_until_available(self, model: str, *, version: int | None = None,
                             timeout: float = DEFAULT_WAIT_S) -> int:
        return _wait(lambda: self.status(model, version=version, timeout=min(self.timeout, timeout)),
                     model, version, timeout)

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None,
                 timeout: float | None = None) -> tuple[int, dict[str, SignatureView]]:
        """(version served, its signatures) from `GET .../metadata`."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        body = self.request("GET", self._model_path(model, version, label) + "/metadata", timeout=timeout)
        signature_map = json_format.ParseDict(
            body["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap()
        )
        views = views_from_signature_defs(signature_map.signature_def)
        served = int(body["model_spec"]["version"])
        self._views[(model, version, label)] = (time.monotonic(), views)
        self._views[(model, served, None)] = (time.monotonic(), views)
        return served, views

    def _signature(self, model: str, version: int | None, label: str | None, signature: str,
                   timeout: float | None) -> SignatureView:
        # A version's signatures never change; "latest" or a label may move to
        # another version, so those are looked up again after a second.
        fetched, views = self._views.get((model, version, label), (0.0, None))
        if views is None or (version is None and time.monotonic() - fetched > _UNPINNED_METADATA_TTL_S):
            _, views = self.metadata(model, version=version, label=label, timeout=timeout)
        if signature not in views:
            raise ClientError(Code.NOT_FOUND, f"model {model!r} has no signature {signature!r} ({sorted(views)}).")
        return views[signature]

    def predict(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        signature: str = SignatureName.PREDICT.value,
        version: int | None = None,
        label: str | None = None,
        format: str | None = None,  # noqa: A002
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs `signature` on `inputs` (by tensor key); returns its outputs by key, as the signature's dtypes.

        The JSON answer names no key when there is one output, and carries no
        dtype, so both come from the model's metadata (fetched once per version).
        """
        view = self._signature(model, version, label, signature, timeout)
        format = format or self.format
        arrays = {key: np.asarray(value) for key, value in inputs.items()}
        if format == "row":
            batch = {a.shape[0] for a in arrays.values() if a.ndim}
            if len(batch) != 1 or any(a.ndim == 0 for a in arrays.values()):
                raise ValueError("the row format needs every input batched alike; use format='columnar'.")
            rows = [{key: a[i].tolist() for key, a in arrays.items()} for i in range(batch.pop())]
            body = {"signature_name": signature, "instances": rows}
        else:
            body = {"signature_name": signature, "inputs": {key: a.tolist() for key, a in arrays.items()}}
        answer = self.request("POST", self._model_path(model, version, label) + ":predict", body, timeout=timeout)
        keys = sorted(view.outputs)
        if format == "row":
            rows = answer["predictions"]
            if len(keys) == 1:
                values = {keys[0]: rows}
            else:
                values = {key: [row[key] for row in rows] for key in keys}
        else:
            outputs = answer["outputs"]
            values = outputs if len(keys) > 1 else {keys[0]: outputs}
        return {key: _as_array(values[key], view.outputs[key].dtype, view.outputs[key].shape) for key in values}

    def backend(self, model: str, *, version: int | None = None, label: str | None = None,
                pin: bool = True, timeout: float | None = None) -> "RemoteBackend":
        """A `Backend` streaming through this client; see `RemoteBackend`."""
        served, views = self.metadata(model, version=version, label=label, timeout=timeout)
        if pin:
            version, label = served, None

        def call(signature, inputs):
            # `initial_state` and `generate` take scalars, which have no row format.
            scalar_input = signature in (SignatureName.INITIAL_STATE.value, SignatureName.GENERATE.value,
                                         SignatureName.GENERATE_FROM.value)
            return self.predict(model, inputs, signature=signature, version=version, label=label,
                                format="columnar" if scalar_input else None, timeout=timeout)

        return RemoteBackend(call, views, version=served)


class _NoDelayConnection(http.client.HTTPConnection):
    """Sends headers and body without waiting on Nagle's algorithm (40 ms per request otherwise)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _as_array(value, dtype: str, shape) -> np.ndarray:
    array = np.asarray(value, dtype=dtype)
    if array.size == 0 and shape is not None and array.ndim < len(shape):
        # JSON writes an empty tensor as [] (or [[]]...): restore the missing trailing sizes.
        array = array.reshape(array.shape + tuple(0 if d is None else d for d in shape[array.ndim :]))
    return array


# ----------------------------------------------------------------------------- backends


class RemoteBackend:
    """`Backend` over a server: `initial_state` and `stream` signatures, keys from metadata.

    By default the backend is pinned to the version its metadata came from, so a
    stream never carries one version's state into another version's weights; a
    pinned version that the server unloads answers NOT_FOUND.

    Args:
        call: runs `(signature, inputs) -> outputs` on the server.
        views: the model's signatures (from metadata).
        version: the version those signatures belong to.
    """

    def __init__(self, call: Callable[[str, Mapping[str, np.ndarray]], dict[str, np.ndarray]],
                 views: Mapping[str, SignatureView], *, version: int):
        self._call = call
        self.keys = SequenceKeys.from_views(views)
        self.version = version
        stream = views[SignatureName.STREAM.value]
        self._dtypes = _input_dtypes(views)
        self._state_shapes = {key: stream.inputs[key].shape[1:] for key in self.keys.states}
        self._views = views

    def initial_state(self, batch_size: int, statics: Mapping[str, np.ndarray] | None = None,
                      context: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Zeros built here from the `stream` signature's state specs, not asked of the server:
        with batching on, TF Serving rejects `initial_state`'s scalar `batch_size` (every
        batched input needs a batch dimension), and the zero state needs no round trip.

        An export with static inputs asks the server's `initial_state` (columnar), since its
        states may start from the static inputs; a TF Serving that batches that model refuses
        the scalar, so serve such a model without batching (`serving-config --no-batching`)."""
        if batch_size < 0:
            raise ValueError(f"`batch_size` must be >= 0. Got: {batch_size}")
        if self.keys.statics or self.keys.contexts:
            feed = {**static_feed(self.keys.statics, statics, self._dtypes, batch_size),
                    **context_feed(self.keys.contexts, context, self._dtypes, batch_size)}
            out = self._call(SignatureName.INITIAL_STATE.value, {self.keys.batch_size: np.int32(batch_size), **feed})
            return {key: out[key] for key in self.keys.states}
        static_feed((), statics, self._dtypes, batch_size)  # none expected: names any given
        context_feed((), context, self._dtypes, batch_size)
        return {key: np.zeros((batch_size, *shape), dtype=self._dtypes[key])
                for key, shape in self._state_shapes.items()}

    def stream(self, inputs, states, lengths=None, statics=None, sequences=None):
        return _stream(self._call, self.keys, self._dtypes, inputs, states, lengths, statics, sequences)

    def generate(self, prompt, max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0, seed: int = 0,
                 statics=None, context=None, states=None):
        """One `generate` request (`generate_from` when given `states`); returns (tokens or predictions, final
        states)."""
        return _generate(self._call, self._views, self.keys, prompt, max_new_tokens, temperature=temperature,
                         top_k=top_k, seed=seed, statics=statics, context=context, states=states)


def _stream(call, keys: SequenceKeys, dtypes: Mapping[str, np.dtype], inputs, states, lengths, statics=None,
            sequences=None):
    inputs = np.asarray(inputs, dtype=dtypes[keys.sequence])
    feed = {keys.sequence: inputs}
    feed.update(sequence_feed(keys.sequences, sequences, dtypes, inputs.shape))
    feed.update(static_feed(keys.statics, statics, dtypes, inputs.shape[0]))
    feed.update({key: np.asarray(states[key], dtype=dtypes[key]) for key in keys.states})
    if keys.lengths is not None:
        if lengths is None:  # every row uses the whole chunk
            lengths = np.full(inputs.shape[0], inputs.shape[1], dtype=np.int32)
        feed[keys.lengths] = np.asarray(lengths, dtype=dtypes[keys.lengths])
    elif lengths is not None:
        raise ValueError("this export takes no `lengths` (it was not exported with masking).")
    out = call(SignatureName.STREAM.value, feed)
    outputs = out[keys.output] if not keys.several_outputs else {key: out[key] for key in keys.outputs}
    return outputs, {key: out[key] for key in keys.states}


class SavedModelBackend:
    """`Backend` over a version folder loaded in this process (no server).

    Runs the same request checks as `seqexport serve` (`serving.server.predict`), so
    in-process, gRPC and REST differ only by transport.

    Args:
        export_dir: a version folder (`BASE/NAME/VERSION`).
    """

    def __init__(self, export_dir: Path):

        export_dir = Path(export_dir)
        version = int(export_dir.name) if export_dir.name.isdigit() else 0
        self.served = load_version(export_dir.parent.name, version, export_dir)
        self.keys = SequenceKeys.from_views(self.served.views)
        self._dtypes = _input_dtypes(self.served.views)

    def predict(self, inputs: Mapping[str, np.ndarray], *, signature: str = SignatureName.PREDICT.value
                ) -> dict[str, np.ndarray]:
        _, outputs = predict.run(self.served, signature, {k: np.asarray(v) for k, v in inputs.items()})
        return outputs

    def initial_state(self, batch_size: int, statics: Mapping[str, np.ndarray] | None = None,
                      context: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        feed = {**static_feed(self.keys.statics, statics, self._dtypes, batch_size),
                **context_feed(self.keys.contexts, context, self._dtypes, batch_size)}
        out = self.predict({self.keys.batch_size: np.int32(batch_size), **feed},
                           signature=SignatureName.INITIAL_STATE.value)
        return {key: out[key] for key in self.keys.states}

    def stream(self, inputs, states, lengths=None, statics=None, sequences=None):
        return _stream(lambda signature, feed: self.predict(feed, signature=signature),
                       self.keys, self._dtypes, inputs, states, lengths, statics, sequences)

    def generate(self, prompt, max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0, seed: int = 0,
                 statics=None, context=None, states=None):
        """One `generate` call (`generate_from` when given `states`); returns (tokens or predictions, final
        states)."""
        return _generate(lambda signature, feed: self.predict(feed, signature=signature), self.served.views,
                         self.keys, prompt, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                         statics=statics, context=context, states=states)


def _generate(call, views: Mapping[str, SignatureView], keys: SequenceKeys, prompt, max_new_tokens: int, *,
              temperature, top_k, seed, statics, context, states=None):
    """The `generate` request (`generate_from` with `states`) from the signature's own keys and dtypes (ids
    exports take the sampling knobs, feedback exports do not); (what it generated, final states by name)."""
    signature = SignatureName.GENERATE.value if states is None else SignatureName.GENERATE_FROM.value
    view = views.get(signature)
    if view is None and states is not None and SignatureName.GENERATE.value in views:
        raise ValueError("this export has `generate` but no `generate_from` (exported by an older seqexport): it "
                         "starts from the initial state only; reset the session, or export it again.")
    if view is None:
        raise ValueError("this export has no `generate` signature (its output does not feed its next input; "
                         "a float model gets one when exported with --generate).")
    dtypes = {key: np.dtype(sig.dtype) for key, sig in view.inputs.items()}
    prompt = np.asarray(prompt, dtype=dtypes["prompt"])
    batch = prompt.shape[0] if prompt.ndim else 0
    feed = {"prompt": prompt, "max_new_tokens": np.asarray(max_new_tokens, dtypes["max_new_tokens"])}
    knobs = {"temperature": temperature, "top_k": top_k, "seed": seed}
    feed.update({key: np.asarray(value, dtypes[key]) for key, value in knobs.items() if key in dtypes})
    feed.update(static_feed(keys.statics, statics, dtypes, batch))
    if states is None:
        feed.update(context_feed(keys.contexts, context, dtypes, batch))
    else:  # the states carry the context already
        feed.update({key: np.asarray(states[key], dtypes[key]) for key in keys.states})
    out = call(signature, feed)
    produced = "tokens" if "tokens" in view.outputs else "predictions"
    return out[produced], {key: out[key] for key in keys.states}


def _input_dtypes(views: Mapping[str, SignatureView]) -> dict[str, np.dtype]:
    """The dtype of each input key of `stream` and `initial_state` (an encoder's context is in the latter only)."""
    return {key: np.dtype(sig.dtype) for name in (SignatureName.INITIAL_STATE.value, SignatureName.STREAM.value)
            for key, sig in views[name].inputs.items()}


def _wait(status: Callable[[], list[VersionStatus]], model: str, version: int | None, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            rows = status()
            available = [r.version for r in rows if r.state is State.AVAILABLE]
            if available:
                return max(available)
            last = rows
        except (ClientError, OSError) as exc:  # not up yet, or the model not seen yet
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"model {model!r} (version {version}) not available after {timeout:.0f} s; last: {last}")
        time.sleep(0.1)
