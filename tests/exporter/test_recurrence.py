"""SimpleRNN and GRU layers as one hoisted loop each: the Keras layer's numbers, gradients by hand."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from exporter import recurrence
from exporter.keras_model import step_model_from_keras
from exporter.recurrence import hoisted_cell, is_hoistable_gru, is_hoistable_simple_rnn
from exporter.trace import trace

UNITS, FEATURES = 6, 5
OUT_TOL, GRAD_TOL = 1e-5, 1e-4  # float32, as the verify defaults (absolute)
LAYERS = {
    "simple_rnn": lambda **kw: keras.layers.SimpleRNN(UNITS, **kw),
    "gru_reset_after": lambda **kw: keras.layers.GRU(UNITS, reset_after=True, **kw),
    "gru_reset_before": lambda **kw: keras.layers.GRU(UNITS, reset_after=False, **kw),
}


def _layer(kind: str, use_bias: bool):
    keras.utils.set_random_seed(3)
    layer = LAYERS[kind](return_sequences=True, return_state=True, use_bias=use_bias,
                         **({"bias_initializer": "random_normal"} if use_bias else {}))
    layer.build((None, None, FEATURES))
    return layer


def _loss_and_grads(call, layer, x, h0, weights):
    with tf.GradientTape() as tape:
        tape.watch([x, h0])
        sequence, last = call(x, h0)
        loss = tf.reduce_sum(sequence * weights[0]) + tf.reduce_sum(last * weights[1])
    return [sequence, last], tape.gradient(loss, [x, h0, *layer.trainable_variables])


def _batch_major(bind, split: bool):
    """A time-major kernel called on `[B, T, F]` as the chain calls it: bound at each call (the weights
    read where the gradient tape sees them), in two batch halves if `split`."""

    def call(x, states):
        kernel = bind()
        x_tm = tf.transpose(x, [1, 0, 2])
        seq, final = recurrence.in_halves(kernel, x_tm, tuple(states)) if split else kernel(x_tm, tuple(states))
        return tf.transpose(seq, [1, 0, 2]), final

    return call


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("use_bias, split", [(True, False), (False, False), (True, True)])
def test_hoisted_loop_matches_keras_layer_outputs_states_and_gradients(kind, use_bias, split):
    """T=19 runs two unrolled blocks and three single steps; T=1 only the single-step loop;
    T=0 returns the state it was given and B=0 empty outputs, with zero weight gradients.
    `split`: in two batch halves (B=3: 1 + 2 rows; B=1: an empty half), as wide layers run."""
    layer = _layer(kind, use_bias)
    hoisted = _batch_major(hoisted_cell(layer.cell), split)
    rng = np.random.default_rng(0)

    @tf.function
    def ours(x, h0, weights):
        return _loss_and_grads(lambda x, h0: (lambda s, st: (s, st[0]))(*hoisted(x, (h0,))), layer, x, h0, weights)

    @tf.function
    def keras_layer(x, h0, weights):
        return _loss_and_grads(lambda x, h0: layer(x, initial_state=[h0]), layer, x, h0, weights)

    for batch, steps in ((3, 19), (1, 1), (3, 0), (0, 5)):
        x = tf.constant(rng.normal(size=(batch, steps, FEATURES)).astype(np.float32))
        h0 = tf.constant(rng.normal(size=(batch, UNITS)).astype(np.float32))
        weights = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in ((batch, steps, UNITS), (batch, UNITS))]
        got, got_grads = ours(x, h0, weights)
        if steps == 0:  # Keras cannot run an empty sequence: the state comes back, nothing depends on the weights
            np.testing.assert_array_equal(got[1], h0)
            np.testing.assert_array_equal(got_grads[1], weights[1])
            assert all(float(tf.reduce_max(tf.abs(g))) == 0.0 for g in got_grads[2:])
            continue
        want, want_grads = keras_layer(x, h0, weights)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=OUT_TOL, rtol=0)
        for g, w in zip(got_grads, want_grads):
            np.testing.assert_allclose(g, w, atol=GRAD_TOL, rtol=0)


def test_only_tanh_sigmoid_float32_cells_are_hoisted():
    assert is_hoistable_simple_rnn(keras.layers.SimpleRNNCell(3))
    assert is_hoistable_gru(keras.layers.GRUCell(3)) and is_hoistable_gru(keras.layers.GRUCell(3, reset_after=False))
    assert not is_hoistable_simple_rnn(keras.layers.SimpleRNNCell(3, activation="relu"))
    assert not is_hoistable_gru(keras.layers.GRUCell(3, recurrent_activation="hard_sigmoid"))
    assert not is_hoistable_gru(keras.layers.LSTMCell(3))
    assert not is_hoistable_gru(keras.layers.GRUCell(3, dtype="float64"))


def test_gru_and_simple_rnn_stacks_keep_while_loop_twins_and_lose_per_step_input_products():
    """The input product of every layer leaves the step: h @ U is the one MatMul per step."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((None, FEATURES)), keras.layers.GRU(4, return_sequences=True),
                              keras.layers.SimpleRNN(3, return_sequences=True), keras.layers.Dense(2)])
    traced = trace(step_model_from_keras(model))
    for name in ("serving_default", "stream"):
        assert f"{name}_unfused" in traced.functions
        assert traced.higher_order_function(name) is traced.functions[f"{name}_unfused"]
    matmuls = _loop_matmuls(traced.functions["serving_default"])
    # Two layers, each one unrolled loop (8 steps; T is padded to whole blocks, no single-step
    # loop): h @ U once per step; the GRU's input products (z and r; n) once per iteration's
    # block, the SimpleRNN's before its loop.
    assert matmuls == [8, 10], matmuls


STACK_UNITS = {2: (6, 4), 3: (6, 4, 5)}


@pytest.fixture(scope="module", params=sorted(STACK_UNITS))
def simple_rnn_stack_layers(request):
    keras.utils.set_random_seed(5)
    layers, features = [], FEATURES
    for units in STACK_UNITS[request.param]:
        layer = keras.layers.SimpleRNN(units, return_sequences=True, return_state=True,
                                       bias_initializer="random_normal")
        layer.build((None, None, features))
        layers.append(layer)
        features = units
    return layers


@pytest.mark.parametrize("split", [False, True])
def test_simple_rnn_stack_wavefront_matches_keras_layers_outputs_states_and_gradients(simple_rnn_stack_layers,
                                                                                      split):
    """2 and 3 layers (unequal widths) in one wavefront loop: the top sequence, every final state and the
    gradients of x, every initial state and every weight, as Keras's layers one after the other.
    T=7 and T=1 fit in one block, T=19 spans three (the stack fills and drains around them); T=0 returns
    the states it was given, B=0 empty outputs. `split`: in two batch halves (B=3: 1 + 2; B=1: one empty)."""
    layers = simple_rnn_stack_layers
    stack = _batch_major(recurrence.simple_rnn_stack([layer.cell for layer in layers]), split)
    variables = [v for layer in layers for v in layer.trainable_variables]
    rng = np.random.default_rng(1)

    def loss_and_grads(call, x, h0s, weights):
        with tf.GradientTape() as tape:
            tape.watch([x, *h0s])
            top, lasts = call(x, h0s)
            loss = tf.reduce_sum(top * weights[0]) + sum(tf.reduce_sum(l * w) for l, w in zip(lasts, weights[1:]))
        return [top, *lasts], tape.gradient(loss, [x, *h0s, *variables])

    def keras_stack(x, h0s):
        lasts = []
        for layer, h0 in zip(layers, h0s):
            x, last = layer(x, initial_state=[h0])
            lasts.append(last)
        return x, lasts

    # One trace each for every shape below.
    ours = tf.function(lambda x, h0s, w: loss_and_grads(stack, x, h0s, w), reduce_retracing=True)
    theirs = tf.function(lambda x, h0s, w: loss_and_grads(keras_stack, x, h0s, w), reduce_retracing=True)
    units = [layer.cell.units for layer in layers]
    for batch, steps in ((3, 7), (1, 1), (3, 19), (1, 7), (3, 0), (0, 7), (0, 1), (1, 0)):
        x = tf.constant(rng.normal(size=(batch, steps, FEATURES)).astype(np.float32))
        h0s = [tf.constant(rng.normal(size=(batch, u)).astype(np.float32)) for u in units]
        weights = [tf.constant(rng.normal(size=(batch, steps, units[-1])).astype(np.float32))]
        weights += [tf.constant(rng.normal(size=(batch, u)).astype(np.float32)) for u in units]
        got, got_grads = ours(x, h0s, weights)
        assert got[0].shape == (batch, steps, units[-1])
        if steps == 0:  # Keras cannot run an empty sequence: the states come back, nothing depends on the weights
            for g, h0 in zip(got[1:], h0s):
                np.testing.assert_array_equal(g, h0)
            for g, w in zip(got_grads[1:1 + len(units)], weights[1:]):
                np.testing.assert_array_equal(g, w)
            assert all(float(tf.reduce_max(tf.abs(g))) == 0.0 for g in got_grads[1 + len(units):])
            continue
        want, want_grads = theirs(x, h0s, weights)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=OUT_TOL, rtol=0)
        assert len(got_grads) == len(want_grads) == 1 + len(units) + 3 * len(units)
        for g, w in zip(got_grads, want_grads):
            np.testing.assert_allclose(g, w, atol=GRAD_TOL, rtol=0)


def _loop_matmuls(function) -> list[int]:
    graph = function.graph.as_graph_def()
    bodies = [f for f in graph.library.function if "body" in f.signature.name]
    return sorted(sum(n.op in ("MatMul", "BatchMatMulV2") for n in f.node_def) for f in bodies)


def test_consecutive_simple_rnn_layers_share_one_loop_and_keep_keras_numbers():
    """SimpleRNN, SimpleRNN, Dense, SimpleRNN, GRU: only the first two are consecutive SimpleRNNs, so
    one wavefront loop runs them (per iteration 8 steps of each and the second's input product of one
    block); the third SimpleRNN and the GRU run layer by layer (one unrolled loop each)."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((None, FEATURES)), keras.layers.SimpleRNN(4, return_sequences=True),
                              keras.layers.SimpleRNN(3, return_sequences=True), keras.layers.Dense(3),
                              keras.layers.SimpleRNN(3, return_sequences=True),
                              keras.layers.GRU(2, return_sequences=True)])
    step_model = step_model_from_keras(model)
    traced = trace(step_model)
    for name in ("serving_default", "stream"):
        assert traced.higher_order_function(name) is traced.functions[f"{name}_unfused"]
    matmuls = _loop_matmuls(traced.functions["serving_default"])
    assert matmuls == [8, 10, 17], matmuls
    x = tf.constant(np.random.default_rng(4).normal(size=(3, 13, FEATURES)).astype(np.float32))
    states = tuple(tf.zeros((3, *s.shape)) for s in step_model.states)
    outputs, final = step_model.fused_unroll(x, states)
    np.testing.assert_allclose(outputs, model(x), atol=OUT_TOL, rtol=0)
    assert [tuple(f.shape) for f in final] == [(3, 4), (3, 3), (3, 3), (3, 2)]


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_hoisted_loop_second_derivatives_match_the_keras_layer_under_any_tape(kind):
    """The hand-written gradient is differentiated in turn (a nested tape): d/dx and d/dW of the
    input-gradient penalty match the Keras layer's, for `GRUBlockCell`'s loop (no TF gradient: read
    through its twin) as for the others. A persistent tape still gives the plain first derivatives."""
    layer = _layer(kind, use_bias=True)
    hoisted = _batch_major(hoisted_cell(layer.cell), split=True)
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(3, 11, FEATURES)).astype(np.float32))
    h0 = tf.constant(rng.normal(size=(3, UNITS)).astype(np.float32))

    @tf.function
    def ours(x, h0):
        return hoisted(x, (h0,))[0]

    def keras_layer(x, h0):
        return layer(x, initial_state=[h0])[0]

    def first_derivatives(call, persistent: bool):
        with tf.GradientTape(persistent=persistent) as tape:
            tape.watch([x, h0])
            total = tf.reduce_sum(tf.sin(call(x, h0)))
        return tape.gradient(total, [x, h0, *layer.trainable_variables])

    plain, persistent = first_derivatives(ours, False), first_derivatives(ours, True)
    for got, want in zip(persistent, plain):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)

    def penalty_derivatives(call):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                total = tf.reduce_sum(tf.sin(call(x, h0)))
            d_x = inner.gradient(total, x)
            square = tf.reduce_sum(d_x * d_x)
        return outer.gradient(square, [x, *layer.trainable_variables])

    got, want = penalty_derivatives(ours), penalty_derivatives(keras_layer)
    assert float(tf.reduce_max(tf.abs(want[0]))) > 1e-2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=GRAD_TOL, rtol=1e-3)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_batch_and_time_swapped_as_bits_match_the_plain_transpose_values_and_derivatives(dtype):
    x = tf.cast(tf.random.stateless_normal([3, 5, 4], seed=[1, 2]), dtype)
    weights = tf.cast(tf.random.stateless_normal([5, 3, 4], seed=[3, 4]), dtype)

    def derivatives(swap):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(swap(x) ** 3 * weights)
            first = inner.gradient(loss, x)
            second_loss = tf.reduce_sum(first ** 2)
        return swap(x), first, outer.gradient(second_loss, x)

    got = derivatives(recurrence.swap_batch_and_time_bits)
    want = derivatives(recurrence.swap_batch_and_time)
    for g, w in zip(got, want):
        assert g.dtype == tf.as_dtype(dtype) and g.shape == w.shape
        np.testing.assert_array_equal(tf.cast(g, tf.float64).numpy(), tf.cast(w, tf.float64).numpy())


def test_whole_sequence_runs_swap_batch_and_time_as_integer_bits_and_the_while_loop_twin_as_floats():
    """oneDNN's `_MklTranspose` (what TF's CPU build runs for a float `Transpose`) costs more per call than
    Eigen's for a chunk's small tensors; the twins that LiteRT and tf2onnx read keep the plain op."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, FEATURES)), keras.layers.GRU(UNITS, return_sequences=True),
                              keras.layers.Dense(2)])
    traced = trace(step_model_from_keras(model))

    def moving_transposes(name):
        """The dtype of every top-level `Transpose` by a constant permutation that moves an axis (Keras's
        Dense on a sequence adds one by a computed permutation, the identity here)."""
        nodes = {n.name: n for n in traced.functions[name].graph.as_graph_def().node}
        dtypes = []
        for node in (n for n in nodes.values() if n.op == "Transpose"):
            perm = nodes[node.input[1].split(":")[0]]
            if perm.op == "Const" and list(tf.make_ndarray(perm.attr["value"].tensor)) != [0, 1, 2]:
                dtypes.append(tf.as_dtype(node.attr["T"].type).name)
        return dtypes

    assert moving_transposes("serving_default") == ["int32", "int32"]  # the input, and the output back
    assert moving_transposes("serving_default_unfused") == ["float32", "float32"]
