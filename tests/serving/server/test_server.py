"""`seqexport serve` on loopback: TF Serving's API shapes, bad requests, version folders."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import threading
import time

import grpc
import numpy as np
import pytest

from tests.fixtures.serving import MAX_REQUEST_BYTES

STREAM = "stream"


def _stream_feed(offline, batch=1, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    states = {k: (0.3 * rng.normal(size=v.shape)).astype(np.float32) for k, v in offline.initial_state(batch).items()}
    return {offline.keys.sequence: rng.normal(size=(batch, steps, 4)).astype(np.float32), **states}


def _raw_predict(server, request, timeout=10.0):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)


def _request(model="demo", signature=STREAM, feed=None, version=None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, value in (feed or {}).items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def _rest(server, method, path, body=None, raw: bytes | None = None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    try:
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        connection.request(method, path, body=payload, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def _still_serving(server, offline):
    """A good request over both front ends after a bad one: the server carried on."""
    from serving.client import GrpcClient, RestClient

    feed = _stream_feed(offline)
    with GrpcClient(server.grpc_target) as g, RestClient(server.rest_url) as r:
        assert g.predict("demo", feed, signature=STREAM)[offline.keys.output].shape == (1, 3, 2)
        assert r.predict("demo", feed, signature=STREAM)[offline.keys.output].shape == (1, 3, 2)


# ----------------------------------------------------------------------------- API shapes


def test_status_and_metadata_have_tf_servings_shapes(server, grpc_client, rest_client):
    status, body = _rest(server, "GET", "/v1/models/demo")
    assert status == 200, body
    assert body == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]}
    assert _rest(server, "GET", "/v1/models/demo/versions/1")[1] == body

    status, meta = _rest(server, "GET", "/v1/models/demo/metadata")
    assert status == 200, meta
    assert meta["model_spec"] == {"name": "demo", "version": "1", "signature_name": ""}
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "stream", "step", "initial_state"} <= set(signatures)
    stream_inputs = signatures["stream"]["inputs"]
    assert stream_inputs["inputs"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in stream_inputs["inputs"]["tensor_shape"]["dim"]] == ["-1", "-1", "4"]

    version, views = grpc_client.metadata("demo")
    assert version == 1 and set(views) == set(signatures)
    assert views["stream"].inputs["lstm_h"].shape == (None, 16)
    assert [(r.version, r.state.name, r.error) for r in grpc_client.status("demo")] == [(1, "AVAILABLE", "")]
    assert rest_client.metadata("demo")[1] == views


def test_predict_response_formats(server, offline):
    """Row format answers `predictions` (one object per batch row), columnar answers `outputs`."""
    feed = _stream_feed(offline, batch=2)
    want = offline.predict(feed, signature=STREAM)
    rows = [{k: v[i].tolist() for k, v in feed.items()} for i in range(2)]
    status, body = _rest(server, "POST", "/v1/models/demo:predict", {"signature_name": STREAM, "instances": rows})
    assert status == 200, body
    assert len(body["predictions"]) == 2 and set(body["predictions"][0]) == set(want)
    np.testing.assert_array_equal(np.array([p["outputs"] for p in body["predictions"]], np.float32), want["outputs"])

    columns = {k: v.tolist() for k, v in feed.items()}
    status, body = _rest(server, "POST", "/v1/models/demo/versions/1:predict",
                         {"signature_name": STREAM, "inputs": columns})
    assert status == 200, body
    assert set(body["outputs"]) == set(want)
    np.testing.assert_array_equal(np.array(body["outputs"]["lstm_c"], np.float32), want["lstm_c"])

    # A signature with one input takes the bare value as `inputs`.
    status, body = _rest(server, "POST", "/v1/models/demo:predict", {"signature_name": "initial_state", "inputs": 2})
    assert status == 200 and np.array(body["outputs"]["gru_h"]).shape == (2, 12)

    response = _raw_predict(server, _request(feed=feed))
    assert response.model_spec.name == "demo" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == STREAM


# ----------------------------------------------------------------------------- bad requests, gRPC


def _grpc_error(server, request):
    with pytest.raises(grpc.RpcError) as info:
        _raw_predict(server, request)
    return info.value.code(), info.value.details()


def _with(feed, **changes):
    out = dict(feed)
    for key, value in changes.items():
        if value is None:
            out.pop(key)
        else:
            out[key] = value
    return out


GRPC_CASES = {
    # name: (request builder(feed), expected code, words the message must contain)
    "unknown model": (lambda f: _request(model="nope", feed=f), grpc.StatusCode.NOT_FOUND, ["'nope'"]),
    "unknown version": (lambda f: _request(version=99, feed=f), grpc.StatusCode.NOT_FOUND, ["version 99"]),
    "unknown signature": (lambda f: _request(signature="nope", feed=f), grpc.StatusCode.FAILED_PRECONDITION,
                          ['"nope"', "stream"]),
    "missing state": (lambda f: _request(feed=_with(f, lstm_c=None)), grpc.StatusCode.INVALID_ARGUMENT,
                      ["missing ['lstm_c']"]),
    "extra input": (lambda f: _request(feed=_with(f, bogus=np.zeros(1, np.float32))),
                    grpc.StatusCode.INVALID_ARGUMENT, ["unexpected ['bogus']"]),
    "wrong dtype": (lambda f: _request(feed=_with(f, inputs=f["inputs"].astype(np.float64))),
                    grpc.StatusCode.INVALID_ARGUMENT, ["'inputs'", "float32", "float64"]),
    "wrong feature size": (lambda f: _request(feed=_with(f, inputs=np.zeros((1, 3, 5), np.float32))),
                           grpc.StatusCode.INVALID_ARGUMENT, ["'inputs'", "[1, 3, 5]", "[-1, -1, 4]"]),
    "wrong rank": (lambda f: _request(feed=_with(f, lstm_h=np.zeros(16, np.float32))),
                   grpc.StatusCode.INVALID_ARGUMENT, ["'lstm_h'", "[-1, 16]"]),
    "batch mismatch": (lambda f: _request(feed=_with(f, gru_h=np.zeros((2, 12), np.float32))),
                       grpc.StatusCode.INVALID_ARGUMENT, ["'gru_h'", "batch size 2"]),
    "unknown output filter": (lambda f: _filtered(_request(feed=f), "nope"), grpc.StatusCode.INVALID_ARGUMENT,
                              ["'nope'", "output"]),
    "no model name": (lambda f: _request(model="", feed=f), grpc.StatusCode.INVALID_ARGUMENT, ["model_spec"]),
}


def _filtered(request, name):
    request.output_filter.append(name)
    return request


@pytest.mark.parametrize("case", sorted(GRPC_CASES))
def test_grpc_bad_request_gets_its_status(server, offline, case):
    build, code, words = GRPC_CASES[case]
    got_code, message = _grpc_error(server, build(_stream_feed(offline)))
    print(f"{case}: {got_code.name}: {message}")
    assert got_code == code, message
    for word in words:
        assert word in message


def _proto_cases(feed):
    import tensorflow as tf

    good = tf.make_tensor_proto(feed["inputs"])
    huge = tf.make_tensor_proto(np.float32(0.5))  # one value, declared shape 10^10 elements
    huge.tensor_shape.Clear()
    for size in (100_000, 100_000, 4):
        huge.tensor_shape.dim.add().size = size
    short = tf.make_tensor_proto(feed["inputs"])
    short.tensor_content = short.tensor_content[:-4]
    negative = tf.make_tensor_proto(feed["inputs"])
    negative.tensor_shape.dim[1].size = -3
    bad_dtype = tf.make_tensor_proto(feed["inputs"])
    bad_dtype.dtype = 999
    del good
    return {
        "declared shape over the limit": (huge, grpc.StatusCode.RESOURCE_EXHAUSTED, ["'inputs'", "limit"]),
        "tensor_content too short": (short, grpc.StatusCode.INVALID_ARGUMENT, ["'inputs'", "tensor_content"]),
        "negative dimension": (negative, grpc.StatusCode.INVALID_ARGUMENT, ["'inputs'", "negative"]),
        "unknown dtype enum": (bad_dtype, grpc.StatusCode.INVALID_ARGUMENT, ["'inputs'", "999"]),
    }


def test_grpc_malformed_tensor_protos_are_refused(server, offline):
    feed = _stream_feed(offline)
    for case, (proto, code, words) in _proto_cases(feed).items():
        request = _request(feed=feed)
        request.inputs["inputs"].CopyFrom(proto)
        got_code, message = _grpc_error(server, request)
        print(f"{case}: {got_code.name}: {message}")
        assert got_code == code, (case, message)
        for word in words:
            assert word in message, (case, message)
    _still_serving(server, offline)


def test_grpc_oversize_and_garbage_messages(server, offline):
    steps = MAX_REQUEST_BYTES // 16 + 1  # [1, steps, 4] float32 is just over the limit
    feed = _with(_stream_feed(offline), inputs=np.zeros((1, steps, 4), np.float32))
    code, message = _grpc_error(server, _request(feed=feed))
    print(f"oversize: {code.name}: {message}")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

    # Bytes that are no protobuf message: gRPC itself would answer INTERNAL before any
    # handler runs (TF Serving's C++ server does); this server parses in the handler.
    garbage = {
        "/tensorflow.serving.PredictionService/Predict": "tensorflow.serving.PredictRequest",
        "/tensorflow.serving.PredictionService/GetModelMetadata": "tensorflow.serving.GetModelMetadataRequest",
        "/tensorflow.serving.ModelService/GetModelStatus": "tensorflow.serving.GetModelStatusRequest",
    }
    with grpc.insecure_channel(server.grpc_target) as channel:
        for method, message_name in garbage.items():
            call = channel.unary_unary(method)  # bytes in, bytes out
            with pytest.raises(grpc.RpcError) as info:
                call(b"\xff\xff\xff\xff garbage", timeout=10)
            print(f"garbage to {method}: {info.value.code().name}: {info.value.details()}")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message_name in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/tensorflow.serving.PredictionService/NoSuchMethod")(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    _still_serving(server, offline)


def test_grpc_edge_inputs_are_served(server, offline, grpc_client):
    """NaN passes through; B = 0 gives empty outputs; T = 0 returns the state unchanged."""
    feed = _stream_feed(offline)
    nan = _with(feed, inputs=np.full((1, 3, 4), np.nan, np.float32))
    assert np.isnan(grpc_client.predict("demo", nan, signature=STREAM)["outputs"]).all()

    empty_batch = {k: v[:0] for k, v in feed.items()}
    out = grpc_client.predict("demo", empty_batch, signature=STREAM)
    assert out["outputs"].shape == (0, 3, 2) and out["lstm_h"].shape == (0, 16)

    no_steps = _with(feed, inputs=np.zeros((1, 0, 4), np.float32))
    out = grpc_client.predict("demo", no_steps, signature=STREAM)
    assert out["outputs"].shape == (1, 0, 2) and out["outputs"].dtype == np.float32
    for key in offline.keys.states:
        np.testing.assert_array_equal(out[key], feed[key])  # exactly the state sent
    out = grpc_client.predict("demo", {"inputs": np.zeros((2, 0, 4), np.float32)})
    assert out["outputs"].shape == (2, 0, 2) and not out["gru_h"].any()


def test_lengths_outside_the_chunk_are_refused(server, grpc_client):
    _, views = grpc_client.metadata("masked")
    from serving.signatures import SequenceKeys

    keys = SequenceKeys.from_views(views)
    state = grpc_client.predict("masked", {keys.batch_size: np.int32(2)}, signature="initial_state")
    feed = {keys.sequence: np.ones((2, 3, 3), np.float32), **state}
    ok = grpc_client.predict("masked", {**feed, keys.lengths: np.array([3, 0], np.int32)}, signature=STREAM)
    np.testing.assert_array_equal(ok[keys.states[0]][1], state[keys.states[0]][1])  # length 0: state kept
    for lengths, shown in (([4, 1], "lengths[0] = 4"), ([1, -1], "lengths[1] = -1")):
        from serving.client import ClientError

        with pytest.raises(ClientError) as info:
            grpc_client.predict("masked", {**feed, keys.lengths: np.array(lengths, np.int32)}, signature=STREAM)
        print(info.value)
        assert info.value.code.grpc_name == "INVALID_ARGUMENT"
        assert shown in info.value.message and "[0, T=3]" in info.value.message


def _listening(port: int) -> list[str]:
    """Local addresses of the listening TCP sockets on `port` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


def test_binds_loopback_only_by_default(server):
    from serving.server.server import ServerOptions

    assert ServerOptions(base=server.options.base).host == "127.0.0.1"
    for port in (server.grpc_port, server.rest_port):
        addresses = _listening(port)
        print(f"port {port} listens on {addresses}")
        # 127.0.0.1, as IPv4 or IPv4-mapped IPv6 (gRPC's choice); never 0.0.0.0 or ::
        assert addresses and set(addresses) <= {"0100007F", "0000000000000000FFFF00000100007F"}, addresses


def test_infinity_passes_through_as_the_model_computes_it(server, offline, grpc_client, rest_client):
    """Inf and -Inf are not refused: both transports answer what the model computes, NaN included."""
    feed = _stream_feed(offline, batch=2)
    feed["inputs"][0, :, :2] = [np.inf, -np.inf]  # row 0 only: rows are independent
    want = offline.predict(feed, signature=STREAM)
    for client in (grpc_client, rest_client):
        got = client.predict("demo", feed, signature=STREAM)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])  # NaN == NaN here
    assert not np.isfinite(want["outputs"][0]).all() and np.isfinite(want["outputs"][1]).all()


def test_rest_lengths_outside_the_chunk_are_refused(server):
    cols = {"inputs": [[[1.0] * 3] * 3] * 2, "lengths": [4, 1]}
    status, state = _rest(server, "POST", "/v1/models/masked:predict",
                          {"signature_name": "initial_state", "inputs": 2})
    assert status == 200, state
    cols.update(state["outputs"])
    for lengths, shown in (([4, 1], "lengths[0] = 4"), ([1, -1], "lengths[1] = -1")):
        status, answer = _rest(server, "POST", "/v1/models/masked:predict",
                               {"signature_name": STREAM, "inputs": {**cols, "lengths": lengths}})
        print(status, answer)
        assert status == 400 and shown in answer["error"] and "[0, T=3]" in answer["error"]


# ----------------------------------------------------------------------------- bad requests, REST


def _columns(feed):
    return {k: v.tolist() for k, v in feed.items()}


def _row(cols):
    """Batch row 0 of columnar inputs, as one `instances` item."""
    return {k: v[0] for k, v in cols.items()}


def _rest_cases(feed):
    cols = _columns(feed)
    predict = "/v1/models/demo:predict"
    return {
        "malformed JSON": ("POST", predict, b'{"inputs": [1, 2', 400, ["JSON Parse error"]),
        "not an object": ("POST", predict, b"[1, 2]", 400, ["Is not object"]),
        "both formats": ("POST", predict, {"signature_name": STREAM, "inputs": cols, "instances": [cols]}, 400,
                         ["only one of"]),
        "no inputs": ("POST", predict, {"signature_name": STREAM}, 400, ["'instances'", "'inputs'"]),
        "empty instances": ("POST", predict, {"signature_name": STREAM, "instances": []}, 400, ["No values"]),
        "ragged list": ("POST", predict, {"signature_name": STREAM, "inputs": {**cols, "inputs": [[[1.0] * 4, [1.0] * 3]]}},
                        400, ["'inputs'", "rectangular"]),
        "strings": ("POST", predict, {"signature_name": STREAM, "inputs": {**cols, "lstm_h": [["a"] * 16]}}, 400,
                    ["'lstm_h'", "strings"]),
        "booleans": ("POST", predict, {"signature_name": STREAM, "inputs": {**cols, "lstm_h": [[True] * 16]}}, 400,
                     ["'lstm_h'", "booleans"]),
        "float for int": ("POST", predict, {"signature_name": "initial_state", "inputs": {"batch_size": 1.5}}, 400,
                          ["'batch_size'", "integers"]),
        "int out of range": ("POST", predict, {"signature_name": "initial_state", "inputs": {"batch_size": 2**40}},
                             400, ["'batch_size'", "int32"]),
        "wrong shape": ("POST", predict, {"signature_name": STREAM, "inputs": {**cols, "gru_h": [[0.0] * 11]}}, 400,
                        ["'gru_h'", "[1, 11]"]),
        "missing input": ("POST", predict, {"signature_name": STREAM, "inputs": {"inputs": cols["inputs"]}}, 400,
                          ["Missing named input", "lstm_h"]),
        "unknown input in a row": ("POST", predict, {"signature_name": STREAM, "instances": [{**_row(cols), "x": 1}]},
                                   400, ["named input: x"]),
        "unknown model": ("POST", "/v1/models/nope:predict", {"inputs": cols}, 404, ["'nope'"]),
        "unknown version": ("POST", "/v1/models/demo/versions/9:predict", {"inputs": cols}, 404, ["version 9"]),
        "unknown label": ("POST", "/v1/models/demo/labels/stable:predict", {"inputs": cols}, 400,
                          ["Unrecognized servable version label: stable"]),
        "unknown signature": ("POST", predict, {"signature_name": "nope", "inputs": cols}, 400, ['"nope"']),
        "signature not a string": ("POST", predict, {"signature_name": 3, "inputs": cols}, 400, ["signature_name"]),
        "classify": ("POST", "/v1/models/demo:classify", {"examples": []}, 501, ["classify"]),
        "status of unknown model": ("GET", "/v1/models/nope", None, 404, ["model nope"]),
        "status of unknown version": ("GET", "/v1/models/demo/versions/4", None, 404, ["version 4"]),
        "no model name": ("GET", "/v1/models", None, 400, ["model name"]),
        "not the API": ("GET", "/metrics", None, 404, ["/v1/models"]),
        "another method": ("DELETE", "/v1/models/demo", None, 400, ["Malformed request: DELETE"]),
        "absurd nesting": ("POST", predict, b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
                           ["JSON Parse error"]),
    }


def test_rest_bad_requests_get_their_codes(server, offline):
    feed = _stream_feed(offline)
    for case, (method, path, body, status, words) in _rest_cases(feed).items():
        raw = body if isinstance(body, bytes) else None
        got, answer = _rest(server, method, path, body=None if raw else body, raw=raw)
        print(f"{case}: {got} {answer}")
        assert got == status, (case, answer)
        assert set(answer) == {"error"}, case
        for word in words:
            assert word in answer["error"], (case, answer)
    _still_serving(server, offline)


def test_rest_nan_passes_through(server, offline):
    feed = _stream_feed(offline)
    body = json.dumps({"signature_name": STREAM, "inputs": {**_columns(feed), "inputs": [[[float("nan")] * 4] * 3]}})
    assert "NaN" in body
    status, answer = _rest(server, "POST", "/v1/models/demo:predict", raw=body.encode())
    assert status == 200, answer
    assert np.isnan(np.array(answer["outputs"]["outputs"], np.float32)).all()


def test_rest_oversize_body_gets_413_before_it_is_sent(server, offline):
    """The server answers from the headers alone and closes; it never reads the body."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/models/demo:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {MAX_REQUEST_BYTES + 1}\r\n\r\n".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    print(head.decode(), body.decode())
    assert head.startswith(b"HTTP/1.1 413")
    assert str(MAX_REQUEST_BYTES) in json.loads(body)["error"]

    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/demo:predict HTTP/1.1\r\nHost: x\r\n\r\n")  # no Content-Length
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400") and b"Content-Length" in reply
    _still_serving(server, offline)


# ----------------------------------------------------------------------------- version folders


def _publish(source, model_dir, version):
    """As `exporter.publish` does: a complete copy under a staging name, then one rename."""
    staging = model_dir / f".staging-{os.getpid()}-test{version}"
    shutil.copytree(source, staging)
    os.rename(staging, model_dir / str(version))


def test_versions_come_and_go_like_tf_serving(serving_base, offline, tmp_path):
    from serving.client import ClientError, GrpcClient
    from serving.server.server import ModelServer, ServerOptions

    source = serving_base / "demo" / "1"
    model_dir = tmp_path / "pub"
    model_dir.mkdir()
    _publish(source, model_dir, 1)
    shutil.copytree(source, model_dir / ".staging-999-abcd")   # an export still being written
    shutil.copytree(source, model_dir / "latest")              # not a number
    (model_dir / "7").mkdir()                                   # a copy under way: no saved_model.pb yet
    shutil.copytree(source / "variables", model_dir / "7" / "variables")

    feed = _stream_feed(offline)
    options = ServerOptions(base=tmp_path, poll_seconds=0.1, rest_port=None, max_num_load_retries=0)
    with ModelServer(options) as server, GrpcClient(server.grpc_target) as client:
        client.wait_until_available("pub", timeout=30)
        time.sleep(0.5)  # several polls
        assert [(r.version, r.state.name) for r in client.status("pub")] == [(1, "AVAILABLE")]
        with pytest.raises(ClientError, match="version 7"):
            client.predict("pub", feed, signature=STREAM, version=7)

        # Publish version 2 while a client keeps calling: no request may fail.
        failures, calls, stop = [], [0], threading.Event()

        def keep_calling():
            with GrpcClient(server.grpc_target) as caller:
                while not stop.is_set():
                    try:
                        caller.predict("pub", feed, signature=STREAM)
                        calls[0] += 1
                    except Exception as exc:  # noqa: BLE001 - counted, asserted below
                        failures.append(exc)

        caller = threading.Thread(target=keep_calling)
        caller.start()
        try:
            time.sleep(0.3)
            _publish(source, model_dir, 2)
            assert client.wait_until_available("pub", version=2, timeout=30) == 2
            time.sleep(0.5)
        finally:
            stop.set()
            caller.join(timeout=30)
        print(f"{calls[0]} calls during the publish, {len(failures)} failed")
        assert not failures and calls[0] > 0
        assert [(r.version, r.state.name) for r in client.status("pub")] == [(2, "AVAILABLE"), (1, "END")]
        assert client.metadata("pub")[0] == 2

        # A broken newest version: reported, never served, and version 2 stays up.
        (model_dir / "3").mkdir()
        (model_dir / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        deadline = time.monotonic() + 30
        while not (rows := {r.version: r for r in client.status("pub")}).get(3) or rows[3].state.name != "END":
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        print(f"broken version 3: {rows[3]}")
        assert rows[3].error and rows[2].state.name == "AVAILABLE"
        assert client.predict("pub", feed, signature=STREAM)["outputs"].shape == (1, 3, 2)
        assert client.metadata("pub")[0] == 2


# ----------------------------------------------------------------------------- property-based


def _random_request_strategy():
    from hypothesis import strategies as st

    return st.fixed_dictionaries({
        "batch": st.integers(0, 3),
        "state_batch_delta": st.sampled_from([0, 0, 0, 1]),
        "steps": st.integers(0, 4),
        "features": st.sampled_from([4, 4, 3, 5]),
        "dtype": st.sampled_from(["float32", "float32", "float64", "int32"]),
        "fill": st.sampled_from([0.5, float("nan"), float("inf"), -1e30]),
    })


def _random_feed(offline, spec):
    batch, steps = spec["batch"], spec["steps"]
    x = np.full((batch, steps, spec["features"]), spec["fill"] if spec["dtype"] != "int32" else 1)
    states = {k: np.zeros((batch + spec["state_batch_delta"], *v.shape[1:]), np.float32)
              for k, v in offline.initial_state(1).items()}
    return {offline.keys.sequence: x.astype(spec["dtype"]), **states}


def test_random_requests_get_an_answer_never_a_crash(server, offline):
    """Shapes, dtypes and values drawn at random: a right answer or INVALID_ARGUMENT/400 naming a tensor."""
    from hypothesis import HealthCheck, given, settings

    from serving.client import ClientError, GrpcClient, RestClient

    keys = {offline.keys.sequence, *offline.keys.states}
    seen = {"grpc ok": 0, "grpc refused": 0, "rest ok": 0, "rest refused": 0}
    with GrpcClient(server.grpc_target) as grpc_client, RestClient(server.rest_url) as rest_client:

        @settings(max_examples=60, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(spec=_random_request_strategy())
        def check(spec):
            feed = _random_feed(offline, spec)
            fits = spec["features"] == 4 and spec["state_batch_delta"] == 0
            # JSON carries no dtype (its numbers are cast to the signature's), and
            # an empty tensor shows no feature size.
            empty = spec["batch"] == 0 or spec["steps"] == 0
            expected = {"grpc": fits and spec["dtype"] == "float32",
                        "rest": spec["state_batch_delta"] == 0 and (spec["features"] == 4 or empty)}
            for transport, client in (("grpc", grpc_client), ("rest", rest_client)):
                try:
                    out = client.predict("demo", feed, signature=STREAM)
                except ClientError as exc:
                    assert not expected[transport], (transport, spec, exc)
                    assert exc.code.grpc_name == "INVALID_ARGUMENT", (transport, spec, exc)
                    assert any(f"'{k}'" in exc.message for k in keys), exc.message
                    seen[f"{transport} refused"] += 1
                    continue
                assert expected[transport], (transport, spec)
                steps = 0 if transport == "rest" and spec["batch"] == 0 else spec["steps"]  # `[]` has no T
                assert out[offline.keys.output].shape == (spec["batch"], steps, 2)
                if spec["steps"] == 0:
                    for key in offline.keys.states:
                        np.testing.assert_array_equal(out[key], feed[key])
                seen[f"{transport} ok"] += 1

        check()
    print(seen)
    assert all(seen.values())  # both outcomes were exercised on both transports
    _still_serving(server, offline)


def test_random_json_bodies_get_400_never_500(server, offline):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
        max_leaves=20,
    )
    bodies = st.one_of(
        st.binary(max_size=64),
        json_values.map(lambda v: json.dumps(v).encode()),
        json_values.map(lambda v: json.dumps({"signature_name": STREAM, "inputs": v}).encode()),
        json_values.map(lambda v: json.dumps({"signature_name": STREAM, "instances": v}).encode()),
    )
    codes = {}

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(body=bodies)
    def check(body):
        status, answer = _rest(server, "POST", "/v1/models/demo:predict", raw=body)
        codes[status] = codes.get(status, 0) + 1
        assert status in (400, 404), (body, status, answer)  # 404: an unknown signature name
        assert set(answer) == {"error"} and answer["error"]

    check()
    print(codes)
    _still_serving(server, offline)


def _write_warmup(export_dir, requests):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.server.warmup_replay import warmup_file

    path = warmup_file(export_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def test_warmup_records_are_replayed_at_load(serving_base, offline, tmp_path):
    """As TF Serving: good records let the version load; a bad one fails the load, naming the record."""
    from serving.client import GrpcClient
    from serving.server.server import ModelServer, ServerOptions

    model_dir = tmp_path / "warm"
    good, bad = model_dir / ".staging-good", model_dir / ".staging-bad"
    for folder in (good, bad):
        shutil.copytree(serving_base / "demo" / "1", folder)
    feed = _stream_feed(offline)
    _write_warmup(good, [_request(feed=feed), _request(signature="initial_state", feed={"batch_size": np.int32(2)})])
    _write_warmup(bad, [_request(feed=feed), _request(feed=_with(feed, bogus=np.zeros(1, np.float32)))])
    os.rename(good, model_dir / "1")
    options = ServerOptions(base=tmp_path, poll_seconds=0.1, rest_port=None, max_num_load_retries=0)
    with ModelServer(options) as server, GrpcClient(server.grpc_target) as client:
        assert [(r.version, r.state.name) for r in client.status("warm")] == [(1, "AVAILABLE")]
        os.rename(bad, model_dir / "2")
        deadline = time.monotonic() + 30
        while (rows := {r.version: r for r in client.status("warm")}).get(2) is None or rows[2].state.name != "END":
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        print(rows[2].error)
        assert "warmup record 2" in rows[2].error and "'bogus'" in rows[2].error
        assert rows[1].state.name == "AVAILABLE" and client.metadata("warm")[0] == 1


def test_latest_n_versions_labels_and_names(serving_base, offline, tmp_path):
    from serving.client import ClientError, GrpcClient, RestClient
    from serving.server.server import ModelServer, ServerOptions

    for version in (1, 2, 3):
        _publish(serving_base / "demo" / "1", tmp_path / "pub", version)
    _publish(serving_base / "demo" / "1", tmp_path / "other", 1)
    options = ServerOptions(base=tmp_path, names=("pub",), versions=2, poll_seconds=0.1,
                            labels={"pub": {"stable": 2, "canary": 3, "old": 1}})
    feed = _stream_feed(offline)
    with ModelServer(options) as server, GrpcClient(server.grpc_target) as g, RestClient(server.rest_url) as r:
        rows = g.status("pub")
        assert [(s.version, s.state.name) for s in rows] == [(3, "AVAILABLE"), (2, "AVAILABLE"), (1, "END")]
        # label "old" points at a version that is not loaded: said in its row, not a silent 404
        assert "version label 'old' points at version 1" in rows[2].error and rows[2].error_code == 5
        assert g.metadata("pub", label="stable")[0] == 2 and r.metadata("pub", label="canary")[0] == 3
        # GetModelStatus ignores the label (get_model_status_impl.cc): every version, as without it
        by_label = _rest(server, "GET", "/v1/models/pub/labels/stable")[1]["model_version_status"]
        assert [row["version"] for row in by_label] == ["3", "2", "1"]
        response = _raw_predict(server, _request(model="pub", feed=feed, version=2))
        assert response.model_spec.version.value == 2
        assert r.predict("pub", feed, signature=STREAM, label="stable")["outputs"].shape == (1, 3, 2)
        with pytest.raises(ClientError, match="version 1 of model 'pub' is not available"):
            g.predict("pub", feed, signature=STREAM, label="old")  # labelled, but not among the newest 2
        with pytest.raises(ClientError, match="'other' is not served"):
            g.predict("other", feed, signature=STREAM)
