"""The built-in example: a small stateful stacked model, trained for a few seconds.

LSTM -> GradientClip (a `tf.custom_gradient` op) -> GRU -> per-step Dense, all
`stateful=True`, trained chunk by chunk on a toy task (a noisy running mean).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

BATCH = 8
FEATURES = 4
CHUNK = 16


def build_model():
    import keras

    from exporter.layers import GradientClip

    inputs = keras.Input(batch_shape=(BATCH, None, FEATURES), name="inputs")
    x = keras.layers.LSTM(16, return_sequences=True, stateful=True, name="lstm")(inputs)
    x = GradientClip(0.5, name="clip")(x)
    x = keras.layers.GRU(12, return_sequences=True, stateful=True, name="gru")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs, name="demo")


def _data(rng, steps: int):
    x = rng.normal(size=(BATCH, steps, FEATURES)).astype("float32")
    running = np.cumsum(x[..., :2], axis=1) / np.arange(1, steps + 1)[None, :, None]
    return x, running.astype("float32")


def _reset_states(model) -> None:
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_state()


def train_demo_model(path: Path, *, seconds: float = 4.0, seed: int = 0) -> Path:
    """Trains the demo model chunk by chunk (state carried, as in production) and saves it."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(seed)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        x, y = _data(rng, 4 * CHUNK)
        _reset_states(model)
        for start in range(0, x.shape[1], CHUNK):
            model.train_on_batch(x[:, start : start + CHUNK], y[:, start : start + CHUNK])
    _reset_states(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path
