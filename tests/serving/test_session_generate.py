"""`StreamingSession.generate` (serving/session.py) over gRPC, REST and in process: one request, the session's
state then carried on from the last generated step; bad inputs refused with INVALID_ARGUMENT on every transport."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from serving.client import GrpcClient, RestClient, SavedModelBackend
from serving.session import StreamingSession
from serving.status import Code, ServingError

TRANSPORTS = ("grpc", "rest", "in-process")


@pytest.fixture(params=TRANSPORTS)
def backend_for(request, generate_server, generate_exports):
    clients = []

    def make(name):
        if request.param == "in-process":
            return SavedModelBackend(generate_exports[name].path)
        client = GrpcClient(generate_server.grpc_target) if request.param == "grpc" else RestClient(
            generate_server.rest_url)
        clients.append(client)
        return client.backend(name)

    yield make
    for client in clients:
        client.close()


def _direct(path, **feed):
    loaded = tf.saved_model.load(str(path))
    return {k: v.numpy() for k, v in loaded.signatures["generate"](**{k: tf.constant(v) for k, v in feed.items()}).items()}


def test_generate_then_feed_continues_from_the_last_generated_id(backend_for, generate_exports):
    path = generate_exports["word_gru_logits"].path
    prompt = np.array([[1, 2, 3], [7, 8, 9]], np.int32)
    session = StreamingSession(backend_for("word_gru_logits"), batch_size=2)
    tokens = session.generate(prompt, 8, temperature=0.8, top_k=5, seed=3)
    want = _direct(path, prompt=prompt, max_new_tokens=np.int32(8), temperature=np.float32(0.8), top_k=np.int32(5),
                   seed=np.int64(3))["tokens"]
    np.testing.assert_array_equal(tokens, want)  # ids: exact, the same seed on every transport
    chunk = np.array([[4, 5], [6, 7]], np.int32)
    got = session.feed(chunk)
    loaded = tf.saved_model.load(str(path))
    states = loaded.signatures["initial_state"](batch_size=tf.constant(2))
    whole = np.concatenate([prompt, tokens, chunk], axis=1)
    reference = loaded.signatures["stream"](inputs=tf.constant(whole), **states)["outputs"].numpy()[:, -2:]
    error = float(np.max(np.abs(got - reference)))
    print(f"feed after generate vs stream over prompt + tokens + chunk: max abs {error} (atol 1e-5)")
    assert error <= 1e-5
    assert session.steps_seen == 3 + 8 + 2


def test_a_feedback_export_generates_predictions(backend_for, generate_exports):
    prompt = np.random.default_rng(0).normal(size=(1, 4, 5)).astype(np.float32)
    session = StreamingSession(backend_for("feedback_lstm"), batch_size=1)
    predictions = session.generate(prompt, 6)
    want = _direct(generate_exports["feedback_lstm"].path, prompt=prompt, max_new_tokens=np.int32(6))["predictions"]
    error = float(np.max(np.abs(predictions - want)))
    print(f"feedback predictions vs the SavedModel: max abs {error} (atol 1e-6)")
    assert predictions.shape == (1, 6, 5) and error <= 1e-6


@pytest.mark.parametrize("knobs, named", [
    (dict(max_new_tokens=33), "input max_new_tokens must be at most 32"),
    (dict(temperature=-1.0), "input temperature must be >= 0"),
    (dict(top_k=31), "input top_k must be at most the vocabulary, 30"),
])
def test_bad_inputs_are_invalid_argument_naming_the_input(backend_for, knobs, named):
    backend = backend_for("word_gru_logits")
    call = dict(max_new_tokens=4, temperature=0.0, top_k=0, seed=0) | knobs
    steps = call.pop("max_new_tokens")
    with pytest.raises(ServingError, match=named) as caught:
        backend.generate(np.ones((1, 2), np.int32), steps, **call)
    assert caught.value.code is Code.INVALID_ARGUMENT


def test_a_session_that_streamed_goes_on_with_generate_from(backend_for, generate_exports):
    """Fed 3 ids, then `generate` on 2 more: `generate_from` with the session's states, the same greedy ids as one
    `generate` over all 5 from the start (and the same states)."""
    backend = backend_for("word_gru_logits")
    prompt = np.array([[3, 9, 1, 4, 7], [2, 2, 8, 5, 6]], np.int32)
    session = StreamingSession(backend, batch_size=2)
    session.feed(prompt[:, :3])
    tokens = session.generate(prompt[:, 3:], 8)
    want = _direct(generate_exports["word_gru_logits"].path, prompt=prompt, max_new_tokens=np.int32(8),
                   temperature=np.float32(0), top_k=np.int32(0), seed=np.int64(0))
    assert np.array_equal(tokens, want["tokens"]), (tokens, want["tokens"])
    error = max(float(np.max(np.abs(session.states[k] - want[k]))) for k in session.states)
    print(f"states after generate_from vs generate from the start: max abs {error} (atol 1e-5)")
    assert error <= 1e-5 and session.steps_seen == 5 + 8


def test_one_rest_request_in_the_readmes_form_generates(generate_server):
    body = {"signature_name": "generate",
            "inputs": {"prompt": [[5, 12, 7]], "max_new_tokens": 16, "temperature": 0.8, "top_k": 10, "seed": 1}}
    with RestClient(generate_server.rest_url) as client:
        first = client.request("POST", "/v1/models/word_gru_logits:predict", body)
        again = client.request("POST", "/v1/models/word_gru_logits:predict", body)
    assert np.asarray(first["outputs"]["tokens"]).shape == (1, 16)
    assert first["outputs"]["tokens"] == again["outputs"]["tokens"]
