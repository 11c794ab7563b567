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


def _cell_variables(seed: int, dtype=tf.float32):
    gen = tf.random.Generator.from_seed(seed)
    return (
        tf.Variable(tf.cast(gen.normal([F, H]) * 2.0, dtype), name="kernel"),
        tf.Variable(tf.cast(gen.normal([H, H]) * 0.5, dtype), name="recurrent"),
        tf.Variable(tf.cast(gen.normal([H]), dtype), name="bias"),
    )


def _tanh_cell(variables, *, clip: bool, mix=None, dtype="float32", description="") -> StepModel:
    """A tanh RNN cell; `clip` clips its input projection's gradient; `mix(h)` may mix batch rows."""
    kernel, recurrent, bias = variables

    def cell(values):
        k, r, b = values

        def step(x, states, mask=None):
            projected = x @ k
            if clip:
                projected = _clip_gradients(projected)
            h = tf.tanh(projected + states[0] @ r + b)
            return (mix(h) if mix else h), (h,)

        return step

    def bind_step():
        return cell([v.read_value() for v in variables])  # read once, outside the loop

    return StepModel(
        step_fn=lambda x, states: cell(variables)(x, states), bind_step=bind_step,
        input_shape=(F,), output_shape=(H,), input_dtype=dtype, output_dtype=dtype,
        states=(StateSpec(name="cell_h", layer="cell", index=0, shape=(H,), dtype=dtype),),
        variables=variables, trainable_variables=variables, description=description,
    )


def clip_cell() -> StepModel:
    """A tanh RNN cell whose input projection's gradient is clipped (the guide's clip_gradients)."""
    return _tanh_cell(_cell_variables(11), clip=True, description="clip cell")


def unclipped_cell() -> StepModel:
    """The same cell and weights without the clip: its gradients must differ."""
    return _tanh_cell(_cell_variables(11), clip=False, description="unclipped cell")


def float64_cell() -> StepModel:
    return _tanh_cell(_cell_variables(13, tf.float64), clip=True, dtype="float64", description="float64 cell")


def batchnorm_training_cell() -> StepModel:
    """Normalises the output over the batch, as BatchNormalization(training=True) does: rows mix."""
    return _tanh_cell(_cell_variables(14), clip=False, description="batch-norm (training) cell",
                      mix=lambda h: tf.nn.batch_normalization(h, *tf.nn.moments(h, axes=[0]), None, None, 1e-3))


def batch_mean_output_cell() -> StepModel:
    """Subtracts the batch mean from the output (a tf.reduce_mean over axis 0): rows mix."""
    return _tanh_cell(_cell_variables(15), clip=False, description="batch-mean output",
                      mix=lambda h: h - tf.reduce_mean(h, axis=0, keepdims=True))


def batch_mean_state_cell() -> StepModel:
    """A cell whose state update averages over the batch: rows mix through the state."""
    kernel, recurrent, bias = _cell_variables(16)

    def step(x, states):
        pooled = tf.reduce_mean(states[0], axis=0, keepdims=True)
        h = tf.tanh(x @ kernel + pooled @ recurrent + bias)
        return h, (h,)

    variables = (kernel, recurrent, bias)
    return StepModel(
        step_fn=step, input_shape=(F,), output_shape=(H,),
        states=(StateSpec(name="cell_h", layer="cell", index=0, shape=(H,)),),
        variables=variables, trainable_variables=variables, description="batch-mean state",
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


def seed_step_model_file(path):
    """The seed's case 3: Model([x_t, state], [y_t, new_state]) built from SimpleRNNCell, saved."""
    import keras

    keras.utils.set_random_seed(3)
    x_t = keras.Input((F,), name="x_t")
    state = keras.Input((H,), name="state")
    out, new_state = keras.layers.SimpleRNNCell(H)(x_t, state)
    keras.Model([x_t, state], [out, new_state]).save(path)
    return path


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


def wrong_fused() -> StepModel:
    """A step model whose whole-sequence kernel is off by 1e-3 from its step (the fused check must fail)."""
    import dataclasses

    from exporter.trace import unroll

    model = clip_cell()

    def fused(inputs, states):
        outputs, final = unroll(model, inputs, states)
        return outputs + 1e-3, final

    return dataclasses.replace(model, fused_unroll=fused)


def second_order_lost(step_model: StepModel) -> StepModel:
    """`step_model` (with a whole-sequence kernel) whose kernel's gradient has a custom gradient of its own,
    as seqexport's batch-time transpose had: a SavedModel keeps the custom gradients of a function's own
    ops only, so after a reload second derivatives through `serving_default` fail with the seed's
    "No gradient defined for operation 'IdentityN'", while in the exporting process they work."""
    import dataclasses

    @tf.custom_gradient
    def passthrough(y):
        @tf.custom_gradient
        def back(dy):
            return tf.identity(dy), tf.identity

        return tf.identity(y), back

    real = step_model.fused_unroll

    def fused(inputs, states):
        outputs, final = real(inputs, states)
        return passthrough(outputs), final

    return dataclasses.replace(step_model, fused_unroll=fused)
