"""seqexport's own Keras layers (registered on import, so safe mode loads them)."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="seqexport")
class GradientClip(keras.layers.Layer):
    """Identity forward; backward clips each timestep's gradient vector to `clip_norm`.

    The guide's `clip_gradients` (`tf.clip_by_norm(dy, 0.5)`) as a layer. The norm is
    taken over the last axis only, so a step and a whole sequence clip alike.
    """

    seqexport_per_step = True

    def __init__(self, clip_norm: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.clip_norm = float(clip_norm)
        self.supports_masking = True

    def call(self, inputs):
        clip_norm = self.clip_norm

        @tf.custom_gradient
        def clip_gradients(x):
            def grad(dy):
                return tf.clip_by_norm(dy, clip_norm, axes=[-1])

            return tf.identity(x), grad

        return clip_gradients(inputs)

    def get_config(self):
        return {**super().get_config(), "clip_norm": self.clip_norm}
