"""Step models for tests that need an op a runtime cannot take (`package.module:function` sources)."""

from __future__ import annotations


def digamma_cell():
    """A one-state cell that uses `tf.math.digamma`: TF has it (and its gradient), LiteRT and ONNX do not."""
    import tensorflow as tf

    from exporter.artifact.specs import StateSpec
    from exporter.step_model import StepModel

    w = tf.Variable(0.5 * tf.random.stateless_normal([3, 4], seed=[1, 2]), name="w")
    u = tf.Variable(0.5 * tf.random.stateless_normal([4, 4], seed=[3, 4]), name="u")

    def step(x, states):
        h = tf.tanh(x @ w + states[0] @ u) + 0.01 * tf.math.digamma(2.0 + tf.sigmoid(states[0]))
        return h, (h,)

    return StepModel(
        step_fn=step, input_shape=(3,), output_shape=(4,),
        states=(StateSpec(name="cell_h", layer="cell", index=0, shape=(4,)),),
        variables=(w, u), trainable_variables=(w, u), description="digamma cell",
    )
