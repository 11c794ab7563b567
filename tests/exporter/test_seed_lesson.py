"""The seed's lesson: a stateful Keras RNN fed in chunks has the right loss but wrong
gradients; the exported `stream` fed the same chunks matches one full pass."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from exporter.keras_model import step_model_from_keras
from exporter.pipeline import write_export

GRAD_ATOL = 1e-5
T, B, F = 6, 2, 3


def _stateful_model(stacked: bool):
    keras.utils.set_random_seed(1)
    inputs = keras.Input(batch_shape=(B, None, F))
    x = keras.layers.SimpleRNN(4, return_sequences=True, stateful=True, name="rnn1")(inputs)
    if stacked:
        x = keras.layers.SimpleRNN(4, return_sequences=True, stateful=True, name="rnn2")(x)
    return keras.Model(inputs, x)


def _keras_loss_and_grads(model, x, chunks: int):
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_state()
    with tf.GradientTape() as tape:
        outputs = [model(piece) for piece in np.array_split(x, chunks, axis=1)]
        loss = tf.reduce_sum(tf.concat(outputs, axis=1) ** 2)
    return float(loss), [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def _exported_loss_and_grads(loaded, x, chunks: int):
    names = sorted(loaded.signatures["initial_state"].structured_outputs)
    states = loaded.signatures["initial_state"](batch_size=tf.constant(B))
    variables = list(loaded.trainable_variables)
    with tf.GradientTape() as tape:
        outputs = []
        for piece in np.array_split(x, chunks, axis=1):
            result = loaded.signatures["stream"](inputs=tf.constant(piece), **{n: states[n] for n in names})
            outputs.append(result["outputs"])
            states = {n: result[n] for n in names}
        loss = tf.reduce_sum(tf.concat(outputs, axis=1) ** 2)
    return float(loss), [g.numpy() for g in tape.gradient(loss, variables)]


@pytest.fixture(scope="module", params=[False, True], ids=["one-layer", "stacked"])
def seed_case(request, tmp_path_factory):
    model = _stateful_model(stacked=request.param)
    export_dir = tmp_path_factory.mktemp("seed") / "1"
    write_export(step_model_from_keras(model), export_dir, name="seed", source={"kind": "test"})
    x = np.random.default_rng(0).normal(size=(B, T, F)).astype("float32")
    return model, tf.saved_model.load(str(export_dir)), x


def _max_grad_error(grads_a, grads_b) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(grads_a, grads_b))


def test_keras_stateful_layer_in_chunks_gives_wrong_gradients(seed_case):
    model, _, x = seed_case
    full_loss, full_grads = _keras_loss_and_grads(model, x, chunks=1)
    chunk_loss, chunk_grads = _keras_loss_and_grads(model, x, chunks=2)
    error = _max_grad_error(full_grads, chunk_grads)
    print(f"keras chunked: loss diff {abs(full_loss - chunk_loss):.2e}, max grad error {error:.2e}")
    assert chunk_loss == pytest.approx(full_loss, rel=1e-5)
    assert error > 1e-3, "the state variables should cut the gradient path between chunks"


@pytest.mark.parametrize("chunks", [2, 3, T])
def test_exported_stream_in_chunks_matches_full_pass(seed_case, chunks):
    """Horizontal (through time) and, for the stack, vertical (through layers) backprop."""
    model, loaded, x = seed_case
    full_loss, full_grads = _keras_loss_and_grads(model, x, chunks=1)
    loss, grads = _exported_loss_and_grads(loaded, x, chunks)
    error = _max_grad_error(full_grads, grads)
    print(f"exported stream x{chunks}: max grad error {error:.2e} (tolerance {GRAD_ATOL})")
    assert loss == pytest.approx(full_loss, rel=1e-5)
    assert len(grads) == len(model.trainable_variables)  # every layer's weights
    assert error <= GRAD_ATOL
