"""Whole-sequence kernels for cells TF has one for: an LSTM layer as one `BlockLSTM` op.

Why: a `tf.while_loop` pays the graph executor for every op of every step; TF's
`BlockLSTM` kernel runs the whole sequence in C++, forward and backward (measured
in scripts/bench.py). Used by `serving_default` and `stream` only: `step` keeps the
cell, and every fused signature keeps an `<name>_unfused` twin (the while_loop): neither
LiteRT nor tf2onnx converts `BlockLSTM`, and the `fused` check compares the two.

Why `BlockLSTM` and not `BlockLSTMV2`: on CPU, V2's forward uses Keras's gate order
(i, f, c, o) but its registered gradient calls `BlockLSTMGrad`, which assumes
(i, c, f, o): its gradients are wrong (input gradients off by 2.8 on a 128-unit LSTM;
tests/exporter/test_fused.py keeps that finding honest). V1 with the gates reordered
and `forget_bias=0` matches the Keras cell.

Its gradient is not `BlockLSTMGrad` (one op that does every step's weight products one
small product at a time: slower than Keras's own loop at B=1): a `tf.custom_gradient`
reads the gates `BlockLSTM` already returns, runs one backward loop of `dh @ U^T` and a
few element-wise ops per step (exporter/recurrence.py's unrolled `scan`), and computes
the weight gradients as one matrix product each after that loop. Second derivatives
differentiate that gradient, and what it reads of `BlockLSTM` as `blocklstm_twin`
(`recurrence.differentiable_as`): `BlockLSTMGrad` has no gradient, and `BlockLSTM`'s
registered one ignores the gradients of the gates it returns.
"""

from __future__ import annotations

from collections.abc import Callable

from exporter.recurrence import (dense_upstream, differentiable_as, last_or_initial, matmul_seq, outer_sum,
                                 previous_steps, scan)


def is_fusable_lstm(cell) -> bool:
    """A Keras `LSTMCell` whose maths is `BlockLSTM`'s: tanh/sigmoid, float32."""
    import keras

    return (
        type(cell) is keras.layers.LSTMCell
        and cell.activation is keras.activations.tanh
        and cell.recurrent_activation is keras.activations.sigmoid
        and cell.compute_dtype == "float32"
        and cell.variable_dtype == "float32"
    )


def _icfo(tensor):
    """Keras's gate blocks (i, f, c, o) along the last axis, in BlockLSTM's order (i, c, f, o)."""
    import tensorflow as tf

    i, f, c, o = tf.split(tensor, 4, axis=-1)
    return tf.concat([i, c, f, o], axis=-1)


def blocklstm_weights(kernel, recurrent, bias) -> tuple:
    """(w, b) of `BlockLSTM` from Keras's weights: `[kernel; recurrent]` and the bias, gates reordered."""
    import tensorflow as tf

    return _icfo(tf.concat([kernel, recurrent], axis=0)), _icfo(bias)


def blocklstm_twin(x_tm, h0, c0, w, b):
    """What `BlockLSTM` (no peephole, `forget_bias=0`, no clip) returns over `x_tm [T, B, F]`, in plain
    TF ops TF can differentiate: (i, cs, f, o, ci, co, h), each `[T, B, U]`."""
    import tensorflow as tf

    units = int(h0.shape[-1])

    def step(inputs, state):
        h, c = state
        i, ci, f, o = tf.split(tf.concat([inputs[0], h], axis=-1) @ w + b, 4, axis=-1)
        i, ci, f, o = tf.sigmoid(i), tf.tanh(ci), tf.sigmoid(f), tf.sigmoid(o)
        cs = ci * i + c * f
        co = tf.tanh(cs)
        h = co * o
        return (i, cs, f, o, ci, co, h), (h, cs)

    outputs, _ = scan(step, (x_tm,), (h0, c0), (units,) * 7, unroll=1)
    return tuple(outputs)


def lstm_sequence(x_tm, h0, c0, kernel, recurrent, bias, blocklstm: tuple):
    """Keras's LSTM over `x_tm [T, B, F]` in one `BlockLSTM` op, gradient by hand.

    Weights in Keras's layout and gate order (i, f, c, o); `blocklstm`: their
    `blocklstm_weights` (made once for both batch halves). Returns (h_seq [T, B, U], h_T, c_T).
    """
    import tensorflow as tf

    units = int(recurrent.shape[0])

    @tf.custom_gradient
    def run(x_tm, h0, c0, kernel, recurrent, bias):
        no_peephole = tf.zeros([units], x_tm.dtype)
        # Captured, not an input: the gradient below is the weights' whole gradient.
        w, b = blocklstm
        gates = tf.raw_ops.BlockLSTM(
            seq_len_max=tf.cast(tf.shape(x_tm)[0], tf.int64), x=x_tm, cs_prev=c0, h_prev=h0,
            w=w, wci=no_peephole, wcf=no_peephole, wco=no_peephole,
            b=b, forget_bias=0.0, cell_clip=-1.0, use_peephole=False,
        )
        # What the gradient below reads of BlockLSTM, differentiable (second derivatives) as the twin.
        i, cs, f, o, g, tanh_c, hs = differentiable_as(tuple(gates), (x_tm, h0, c0, w, b), blocklstm_twin)
        h_last, c_last = last_or_initial(h0, hs), last_or_initial(c0, cs)

        def grad(d_hs, d_h_last, d_c_last):
            d_hs, d_h_last, d_c_last = dense_upstream(d_hs, hs), dense_upstream(d_h_last, h_last), dense_upstream(d_c_last, c_last)
            # SigmoidGrad(y, dy) = dy * y * (1 - y) and TanhGrad(y, dy) = dy * (1 - y^2): one op
            # over the sequence each, where the three ops each would be three passes over memory.
            d_c_from_h = tf.raw_ops.TanhGrad(y=tanh_c, dy=o)  # dc_t / dh_t
            # d(pre-activations, Keras order i, f, c, o) / (dc, dc, dc, dh) per step.
            coefficients = tf.concat([tf.raw_ops.SigmoidGrad(y=i, dy=g),
                                      tf.raw_ops.SigmoidGrad(y=f, dy=previous_steps(c0, cs)),
                                      tf.raw_ops.TanhGrad(y=g, dy=i), tf.raw_ops.SigmoidGrad(y=o, dy=tanh_c)], axis=-1)
            u_t = tf.transpose(recurrent)

            def backward(inputs, state):
                upstream, d_c_from_h_t, coefficients_t, f_t = inputs
                d_h = upstream + state[0]
                d_c = state[1] + d_h * d_c_from_h_t
                d_pre = tf.concat([d_c, d_c, d_c, d_h], axis=-1) * coefficients_t
                return (d_pre,), (d_pre @ u_t, d_c * f_t)

            (d_pre,), (d_h0, d_c0) = scan(backward, (d_hs, d_c_from_h, coefficients, f), (d_h_last, d_c_last),
                                          (4 * units,), reverse=True)
            return (matmul_seq(d_pre, kernel, transpose_b=True), d_h0, d_c0, outer_sum(x_tm, d_pre),
                    outer_sum(previous_steps(h0, hs), d_pre), tf.reduce_sum(d_pre, axis=[0, 1]))

        return (hs, h_last, c_last), grad

    return run(x_tm, h0, c0, kernel, recurrent, bias)


def fused_lstm(cell) -> Callable:
    """`bind() -> (x_tm [T, B, F], (h, c)) -> (h_seq [T, B, U], (h_T, c_T))` for a Keras LSTM cell, in
    BlockLSTM ops. `bind` reads the weights and reorders them for BlockLSTM once, for every call
    of what it returns (both batch halves).

    Run it in two batch halves (`recurrence.in_halves`): the kernel alone kept one of two cores
    busy, 1.6-1.75x slower at B=32. BlockLSTMGrad, which returned uninitialised weight gradients
    on an empty batch or sequence (22.4 instead of 0), is not used.
    """
    import tensorflow as tf

    units = int(cell.units)

    def bind():
        kernel = tf.convert_to_tensor(cell.kernel.value)
        recurrent = tf.convert_to_tensor(cell.recurrent_kernel.value)
        bias = tf.convert_to_tensor(cell.bias.value) if cell.use_bias else tf.zeros([4 * units], kernel.dtype)
        blocklstm = blocklstm_weights(kernel, recurrent, bias)

        def run(x_tm, states):
            h_seq, h_last, c_last = lstm_sequence(x_tm, *states, kernel, recurrent, bias, blocklstm)
            return h_seq, (h_last, c_last)

        return run

    return bind
