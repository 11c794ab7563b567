"""Whole-sequence kernels for cells TF has one for: an LSTM layer as one `BlockLSTM` op.

Why: a `tf.while_loop` pays the graph executor for every op of every step; TF's
`BlockLSTM` kernel runs the whole sequence in C++, forward and backward (measured
in scripts/bench.py). Used by `serving_default` and `stream` only: `step` keeps the
cell, and every fused signature keeps an `<name>_unfused` twin (the while_loop),
because TF defines no gradient of `BlockLSTMGrad` (no second derivatives) and
neither LiteRT nor tf2onnx converts `BlockLSTM`.

Why `BlockLSTM` and not `BlockLSTMV2`: on CPU, V2's forward uses Keras's gate order
(i, f, c, o) but its registered gradient calls `BlockLSTMGrad`, which assumes
(i, c, f, o): its gradients are wrong (input gradients off by 2.8 on a 128-unit LSTM;
tests/exporter/test_fused.py keeps that finding honest). V1 with the gates reordered
and `forget_bias=0` matches the Keras cell, gradients included.
"""

from __future__ import annotations

from collections.abc import Callable


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


def fused_lstm(cell) -> Callable:
    """`(x [B, T, F], (h, c)) -> (h_seq [B, T, U], (h_T, c_T))` for a Keras LSTM cell, in BlockLSTM ops."""
    import tensorflow as tf

    units = int(cell.units)

    def block(time_major, h0, c0, weights, bias):
        no_peephole = tf.zeros([units], time_major.dtype)
        return tf.raw_ops.BlockLSTM(
            seq_len_max=tf.cast(tf.shape(time_major)[0], tf.int64), x=time_major, cs_prev=c0, h_prev=h0,
            w=weights, wci=no_peephole, wcf=no_peephole, wco=no_peephole, b=bias,
            forget_bias=0.0, cell_clip=-1.0, use_peephole=False,
        )

    def run(time_major, h0, c0, weights, bias):
        """(h_seq [T, B, U], h_T, c_T) for T > 0 and B > 0 rows."""
        result = block(time_major, h0, c0, weights, bias)
        last = tf.shape(time_major)[0] - 1  # gathered: no static check in the branch not taken
        return result.h, tf.gather(result.h, last), tf.gather(result.cs, last)

    def call(inputs, states):
        h0, c0 = states
        inputs = tf.cast(inputs, h0.dtype)  # as Keras casts a float64 input into a float32 cell
        weights = _icfo(tf.concat([cell.kernel.value, cell.recurrent_kernel.value], axis=0))
        bias = _icfo(cell.bias.value) if cell.use_bias else tf.zeros([4 * units], inputs.dtype)
        time_major = tf.transpose(inputs, [1, 0, 2])
        steps, batch = tf.shape(time_major)[0], tf.shape(time_major)[1]

        def halves():
            # Rows are independent: the two halves of the batch run as two ops, which TF's executor
            # runs at once (the kernel alone kept one of two cores busy: 1.6-1.75x faster at B=32).
            sizes = tf.stack([batch // 2, batch - batch // 2])
            parts = [tf.split(t, sizes, axis=a, num=2) for t, a in ((time_major, 1), (h0, 0), (c0, 0))]
            runs = [run(x, h, c, weights, bias) for x, h, c in zip(*parts)]
            return tuple(tf.concat(list(outputs), axis=a) for outputs, a in zip(zip(*runs), (1, 0, 0)))

        def whole():
            return run(time_major, h0, c0, weights, bias)

        def nothing():
            # Never run the kernel on an empty sequence or batch: BlockLSTMGrad then returns
            # uninitialised weight gradients (seen as 22.4 instead of 0). T = 0 returns the
            # state it was given, so an empty chunk leaves a stream where it was.
            return tf.zeros([steps, batch, units], inputs.dtype), tf.identity(h0), tf.identity(c0)

        h_seq, h_last, c_last = tf.cond(
            steps * batch == 0, nothing, lambda: tf.cond(batch >= 2, halves, whole)
        )
        return tf.transpose(h_seq, [1, 0, 2]), (h_last, c_last)

    return call
