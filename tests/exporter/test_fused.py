"""LSTM stacks run in TF's fused `BlockLSTM` kernel: same numbers as the Keras layer, twins kept."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from exporter.fused import fused_lstm, is_fusable_lstm
from exporter.keras_model import step_model_from_keras
from exporter.recurrence import in_halves
from exporter.trace import trace
from tests.exporter import models

UNITS, FEATURES, BATCH, STEPS = 6, 5, 3, 7
OUT_TOL, GRAD_TOL = 1e-5, 1e-4  # float32, as the verify defaults (absolute)


def _lstm_layer(use_bias: bool = True) -> keras.layers.LSTM:
    keras.utils.set_random_seed(4)
    layer = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True, use_bias=use_bias,
                              bias_initializer="random_normal")
    layer.build((None, None, FEATURES))
    return layer


def _inputs(batch=BATCH):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, STEPS, FEATURES)).astype(np.float32))
    h0, c0 = (tf.constant(rng.normal(size=(batch, UNITS)).astype(np.float32)) for _ in range(2))
    return x, h0, c0


def _outputs_and_grads(call, layer, x, h0, c0):
    with tf.GradientTape() as tape:
        tape.watch([x, h0, c0])
        sequence, h, c = call(x, h0, c0)
        loss = tf.reduce_sum(sequence * tf.range(1.0, UNITS + 1.0)) + tf.reduce_sum(h) + 2 * tf.reduce_sum(c)
    grads = tape.gradient(loss, [x, h0, c0, *layer.trainable_variables])
    return [sequence, h, c], grads


def _fused_call(layer):
    """The time-major kernel as the chain runs it: in two batch halves."""
    bind = fused_lstm(layer.cell)

    def call(x, h0, c0):
        sequence, (h, c) = in_halves(bind(), tf.transpose(x, [1, 0, 2]), (h0, c0))
        return tf.transpose(sequence, [1, 0, 2]), h, c

    return call


@pytest.mark.parametrize("use_bias, batch", [(True, 3), (False, 4), (True, 1)])
def test_fused_lstm_matches_keras_layer_outputs_states_and_gradients(use_bias, batch):
    """Batch 1 runs one of the two batch halves empty."""
    layer = _lstm_layer(use_bias)
    x, h0, c0 = _inputs(batch)
    keras_call = lambda x, h0, c0: layer(x, initial_state=[h0, c0])  # noqa: E731
    want, want_grads = _outputs_and_grads(keras_call, layer, x, h0, c0)
    got, got_grads = _outputs_and_grads(_fused_call(layer), layer, x, h0, c0)
    out_err = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
    grad_err = max(float(np.max(np.abs(g - w))) for g, w in zip(got_grads, want_grads))
    print(f"use_bias={use_bias} B={batch}: outputs max abs {out_err:.2e} (tol {OUT_TOL}), "
          f"gradients max abs {grad_err:.2e} (tol {GRAD_TOL})")
    assert out_err <= OUT_TOL and grad_err <= GRAD_TOL


def test_batch_of_one_gradients_stay_right_over_repeated_calls():
    """An empty batch half once gave uninitialised weight gradients (22.4) on some calls only."""
    layer = _lstm_layer()
    x, h0, c0 = _inputs(1)
    want = _outputs_and_grads(lambda x, h0, c0: layer(x, initial_state=[h0, c0]), layer, x, h0, c0)[1]
    fused = tf.function(lambda x, h0, c0: _outputs_and_grads(_fused_call(layer), layer, x, h0, c0)[1])
    errors = [max(float(np.max(np.abs(g - w))) for g, w in zip(fused(x, h0, c0), want)) for _ in range(20)]
    print(f"B=1 gradients over 20 calls: worst max abs {max(errors):.2e} (tol {GRAD_TOL})")
    assert max(errors) <= GRAD_TOL


def test_fused_lstm_second_derivatives_match_the_keras_layer():
    """BlockLSTM's registered gradient ignores the gates' gradients, so what the hand-written gradient
    reads of it is differentiated as a plain-TF twin: d/dx and d/dW of the input-gradient penalty, and a
    Hessian-vector product, equal the Keras layer's."""
    layer = _lstm_layer()
    x, h0, c0 = _inputs()
    fused = _fused_call(layer)
    vector = tf.constant(np.random.default_rng(9).normal(size=x.shape).astype(np.float32))

    def second_derivatives(call):
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                sequence, h, c = call(x, h0, c0)
                total = tf.reduce_sum(tf.sin(sequence)) + tf.reduce_sum(h * c)
            d_x = inner.gradient(total, x)
            square = tf.reduce_sum(d_x * d_x)
            directional = tf.reduce_sum(d_x * vector)
        return [*outer.gradient(square, [x, *layer.trainable_variables]), outer.gradient(directional, x)]

    got = second_derivatives(tf.function(fused))
    want = second_derivatives(lambda x, h0, c0: layer(x, initial_state=[h0, c0]))
    errors = [float(np.max(np.abs(g - w))) for g, w in zip(got, want)]
    print(f"penalty d/dx, d/dW and Hv: max abs {max(errors):.2e} (tol {GRAD_TOL} + 1e-3 relative)")
    assert float(tf.reduce_max(tf.abs(want[0]))) > 1e-2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=GRAD_TOL, rtol=1e-3)


@pytest.mark.parametrize("shape", [(BATCH, 0), (0, STEPS)])
def test_empty_sequence_or_batch_returns_the_state_and_zero_weight_gradients(shape):
    layer = _lstm_layer()
    x = tf.zeros([*shape, FEATURES])
    _, h0, c0 = (t[: shape[0]] for t in _inputs())
    (sequence, h, c), grads = tf.function(
        lambda x, h0, c0: _outputs_and_grads(_fused_call(layer), layer, x, h0, c0))(x, h0, c0)
    assert sequence.shape == (*shape, UNITS)
    np.testing.assert_array_equal(h, h0)
    np.testing.assert_array_equal(c, c0)
    for grad in grads[3:]:
        np.testing.assert_array_equal(grad, np.zeros_like(grad))


def test_blocklstm_v2_gradients_disagree_with_its_forward_on_cpu():
    """Why exporter/fused.py uses V1: V2's gradient assumes another gate order. If this starts
    failing, TF has fixed V2 and it could replace V1 (no gate reordering)."""
    layer = _lstm_layer()
    cell = layer.cell
    x, h0, c0 = _inputs()

    def v2(x, h0, c0):
        zeros = tf.zeros([UNITS])
        result = tf.raw_ops.BlockLSTMV2(
            seq_len_max=tf.constant(STEPS, tf.int64), x=tf.transpose(x, [1, 0, 2]), cs_prev=c0, h_prev=h0,
            w=tf.concat([cell.kernel, cell.recurrent_kernel], 0), wci=zeros, wcf=zeros, wco=zeros,
            b=cell.bias, cell_clip=-1.0, use_peephole=False)
        return tf.transpose(result.h, [1, 0, 2]), result.h[-1], result.cs[-1]

    want, want_grads = _outputs_and_grads(_fused_call(layer), layer, x, h0, c0)
    got, got_grads = _outputs_and_grads(v2, layer, x, h0, c0)
    out_err = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
    input_grad_err = float(np.max(np.abs(got_grads[0] - want_grads[0])))
    print(f"BlockLSTMV2 vs V1: outputs max abs {out_err:.2e}, input gradient max abs {input_grad_err:.2e}")
    assert out_err <= OUT_TOL
    assert input_grad_err > 100 * GRAD_TOL


def test_only_lstm_cells_with_blocklstm_maths_fuse():
    assert is_fusable_lstm(keras.layers.LSTMCell(3))
    assert not is_fusable_lstm(keras.layers.LSTMCell(3, activation="relu"))
    assert not is_fusable_lstm(keras.layers.LSTMCell(3, recurrent_activation="hard_sigmoid"))
    assert not is_fusable_lstm(keras.layers.GRUCell(3))
    float64 = keras.layers.LSTMCell(3, dtype="float64")
    float64.build((None, 2))
    assert not is_fusable_lstm(float64)


def _op_counts(function) -> dict[str, int]:
    """How many nodes of each op type `function` and every function it calls have."""
    graph = function.graph.as_graph_def()
    counts: dict[str, int] = {}
    for node in [*graph.node, *(n for f in graph.library.function for n in f.node_def)]:
        counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def _ops(function) -> set[str]:
    """Op types of `function` and every function it calls; `While` stands for `StatelessWhile` too."""
    return {"While" if op == "StatelessWhile" else op for op in _op_counts(function)}


def test_lstm_stack_signatures_are_fused_and_keep_while_loop_twins():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((None, FEATURES)), keras.layers.LSTM(4, return_sequences=True),
                              keras.layers.Dense(3), keras.layers.LSTM(2), keras.layers.Dense(1)])
    traced = trace(step_model_from_keras(model))
    for name in ("serving_default", "stream"):
        assert "BlockLSTM" in _ops(traced.functions[name]) and "While" not in _ops(traced.functions[name])
        twin = traced.functions[f"{name}_unfused"]
        assert "While" in _ops(twin) and "BlockLSTM" not in _ops(twin)
        assert traced.higher_order_function(name) is twin
    assert "BlockLSTM" not in _ops(traced.functions["step"])
    assert {s.name for s in traced.specs} == {"serving_default", "stream", "step", "initial_state"}


@pytest.mark.parametrize("case", ["no_fused", "jit", "relu_gru", "masked"])
def test_no_fusing_without_kernels_or_when_asked(case):
    if case == "relu_gru":  # no whole-sequence run for a cell with other activations
        model = keras.Sequential([keras.Input((None, FEATURES)), keras.layers.LSTM(3, return_sequences=True),
                                  keras.layers.GRU(2, activation="relu", return_sequences=True)])
    else:
        model = models.build({"masked": "masking"}.get(case, "lstm"))
    step_model = step_model_from_keras(model)
    traced = trace(step_model, fused=case != "no_fused", jit=case == "jit")
    assert not traced.unfused_functions
    assert not any(k.endswith("_unfused") for k in traced.functions)
    assert "BlockLSTM" not in _ops(traced.functions["serving_default"])


def test_simple_rnn_pair_after_an_lstm_runs_as_one_wavefront_that_matches_its_twin_and_keras():
    """LSTM, SimpleRNN, SimpleRNN, Dense: BlockLSTM, then ONE loop for both SimpleRNNs (8 steps of
    each and the second's input product per block: 17 MatMuls), all of it in two batch halves
    (the LSTM runs in halves, and the row-wise layers after it stay in them, so one such loop per
    half). `serving_default` gives Keras's
    numbers, and `stream` gives its `_unfused` twin's outputs, final states and gradients
    (the verification's twin check) over a chunk that fills, runs and drains the wavefront."""
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((None, FEATURES)), keras.layers.LSTM(4, return_sequences=True),
                              keras.layers.SimpleRNN(3, return_sequences=True, bias_initializer="random_normal"),
                              keras.layers.SimpleRNN(2, return_sequences=True), keras.layers.Dense(2)])
    step_model = step_model_from_keras(model)
    traced = trace(step_model)
    serving = traced.functions["serving_default"]
    assert "BlockLSTM" in _ops(serving)
    bodies = [f for f in serving.graph.as_graph_def().library.function if "body" in f.signature.name]
    assert [sum(n.op == "MatMul" for n in f.node_def) for f in bodies] == [17, 17]
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(3, 21, FEATURES)).astype(np.float32))
    np.testing.assert_allclose(serving(inputs=x)["outputs"], model(x), atol=1e-5, rtol=0)

    _assert_stream_matches_its_twin(traced, step_model, x, rng)


def _assert_stream_matches_its_twin(traced, step_model, x, rng):
    """`stream` against its `_unfused` twin from random states: every output, every final state, and
    the gradients of a weighted sum of them w.r.t. x, the states and every weight (the verifier's twin
    check; float32 sums in another order, hence the gradients' tolerance)."""
    states = {s.name: tf.constant(rng.normal(size=(x.shape[0], *s.shape)).astype(np.float32))
              for s in step_model.states}
    variables = list(traced.module.trainable_variables)

    def run(function):
        with tf.GradientTape() as tape:
            tape.watch([x, *states.values()])
            result = function(inputs=x, **states)
            loss = sum(tf.reduce_sum(v * (k + 1.0)) for k, v in enumerate(result[n] for n in sorted(result)))
        return result, tape.gradient(loss, [x, *states.values(), *variables])

    got, got_grads = run(traced.functions["stream"])
    want, want_grads = run(traced.functions["stream_unfused"])
    assert sorted(got) == sorted(want) and len(got) == 1 + len(states)
    for name in got:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0, err_msg=name)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-5)


def test_row_wise_layers_run_in_the_batch_halves_of_the_kernels_around_them():
    """LSTM, Dense, causal Conv1D, LSTM, Dense: whole-sequence runs are time-major, and each run of
    row-wise layers (RNN kernels, Dense) runs in two batch halves from end to end: the first LSTM
    and the Dense after it in halves, the convolution (it needs the batch-major sequence) once on
    the whole batch, then the second LSTM and the head in halves again (so the halves join the
    head's 2 features, not the LSTM's 5). Numbers: Keras's, and the `_unfused` twin's outputs,
    states and gradients."""
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((None, FEATURES)), keras.layers.LSTM(4, return_sequences=True),
                              keras.layers.Dense(3), keras.layers.Conv1D(3, 2, padding="causal"),
                              keras.layers.LSTM(5, return_sequences=True), keras.layers.Dense(2)])
    step_model = step_model_from_keras(model)
    traced = trace(step_model)
    counts = _op_counts(traced.functions["serving_default"])
    assert counts.get("BlockLSTM") == 4, counts
    assert counts.get("Conv2D", 0) + counts.get("Conv1D", 0) == 1, counts
    assert counts.get("MatMul") == 4, counts  # each Dense once per half
    rng = np.random.default_rng(3)
    for batch in (3, 1):  # B=1: one half empty
        x = tf.constant(rng.normal(size=(batch, 11, FEATURES)).astype(np.float32))
        got = traced.functions["serving_default"](inputs=x)["outputs"]
        error = float(np.max(np.abs(got - model(x))))
        print(f"B={batch}: serving_default vs Keras max abs {error:.2e} (tol 1e-5)")
        assert error <= 1e-5

    x = tf.constant(rng.normal(size=(3, 11, FEATURES)).astype(np.float32))
    _assert_stream_matches_its_twin(traced, step_model, x, rng)
