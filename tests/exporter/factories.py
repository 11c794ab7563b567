"""Step-model factories (`package.module:function`) used by the tests, written as a user would."""

from __future__ import annotations

import tensorflow as tf

from exporter import StateSpec, StepModel

F, H = 3, 4


def _clip_gradients(x, clip_norm=0.5):
    """The guide's clip_gradients: identity forward, clipped gradient backward (per row)."""

    @tf.custom_gradient
    def clip(v):
        return tf.identity(v), lambda dy: tf.clip_by_norm(dy, clip_norm, axes=[-1])

    return clip(x)


def clip_cell() -> StepModel:
    """A tanh RNN cell whose input projection's gradient is clipped."""
    gen = tf.random.Generator.from_seed(11)
    kernel = tf.Variable(gen.normal([F, H]) * 2.0, name="kernel")
    recurrent = tf.Variable(gen.normal([H, H]) * 0.5, name="recurrent")
    bias = tf.Variable(gen.normal([H]), name="bias")

    def step(x, states):
        h = tf.tanh(_clip_gradients(x @ kernel) + states[0] @ recurrent + bias)
        return h, (h,)

    variables = (kernel, recurrent, bias)
    return StepModel(
        step_fn=step, input_shape=(F,), output_shape=(H,),
        states=(StateSpec(name="cell_h", layer="cell", index=0, shape=(H,)),),
        variables=variables, trainable_variables=variables, description="clip cell",
    )


def two_state_cell() -> StepModel:
    """Two states of different sizes; a custom gradient on the state path."""
    gen = tf.random.Generator.from_seed(12)
    w_fast = tf.Variable(gen.normal([F + 2, 2]), name="w_fast")
    w_slow = tf.Variable(gen.normal([F + 2 + 5, 5]) * 0.5, name="w_slow")
    w_out = tf.Variable(gen.normal([7, 3]), name="w_out")

    def step(x, states):
        fast, slow = states
        fast_new = tf.tanh(tf.concat([x, fast], -1) @ w_fast)
        slow_new = 0.9 * _clip_gradients(slow, 0.3) + 0.1 * tf.tanh(tf.concat([x, fast_new, slow], -1) @ w_slow)
        y = tf.concat([fast_new, slow_new], -1) @ w_out
        return y, (fast_new, slow_new)

    variables = (w_fast, w_slow, w_out)
    return StepModel(
        step_fn=step, input_shape=(F,), output_shape=(3,),
        states=(StateSpec(name="fast", layer="cell", index=0, shape=(2,)),
                StateSpec(name="slow", layer="cell", index=1, shape=(5,))),
        variables=variables, trainable_variables=variables, description="two-state cell",
    )


def wrong_reference() -> StepModel:
    """A step model whose declared ground truth disagrees with it (the source check must fail)."""
    model = clip_cell()

    def reference(inputs, lengths=None):
        from exporter.trace import unroll

        batch = tf.shape(inputs)[0]
        outputs, _ = unroll(model, inputs, (tf.zeros([batch, H]),))
        return outputs + 1e-3

    import dataclasses

    return dataclasses.replace(model, reference_fn=reference)
