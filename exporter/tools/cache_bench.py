"""`seqexport bench --kv-cache`: generating position t by `step` on the key/value cache, against re-running the prefix.

A causal transformer streamed on its cache (exporter/causal.py) costs O(t) attention at position t; without a
cache, each new position re-runs the whole prefix. At B=1 and N positions, one at a time:
- `step`: N calls of the exported `step` signature, the cache carried;
- `serving_default` on the growing prefix: the export's whole-sequence signature on 1..N steps;
- Keras on the growing prefix: the source model's own call (parallel attention) on 1..N steps.
The prefix re-runs are timed at 8 prefix lengths spread over 1..N and summed over every length by linear
interpolation (timing all N of them takes minutes per repeat at N=512); the rows say so. Every variant runs
in this one process, interleaved, medians (exporter/tools/timing.py).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.artifact.manifest import read_manifest
from exporter.artifact.specs import ExportOptions
from exporter.tools.timing import interleaved_medians

VOCAB, WIDTH, HEADS, BLOCKS = 256, 64, 4, 2
SAMPLED_PREFIXES = 8


@dataclasses.dataclass(frozen=True)
class CacheBenchConfig:
    positions: tuple[int, ...] = (128, 512)
    repeats: int = 3

    @classmethod
    def quick(cls) -> "CacheBenchConfig":
        return cls(positions=(32,), repeats=1)


def causal_model(max_length: int):
    """A pre-norm causal transformer (GPT-2's layout) of `BLOCKS` blocks, learned positions of `max_length`."""
    import keras

    layers = keras.layers
    keras.utils.set_random_seed(3)
    ids = keras.Input(shape=(None,), dtype="int32")
    x = _positions_layer(max_length)(layers.Embedding(VOCAB, WIDTH)(ids))
    for _ in range(BLOCKS):
        h = layers.LayerNormalization(epsilon=1e-5)(x)
        x = layers.Add()([x, layers.MultiHeadAttention(HEADS, WIDTH // HEADS)(h, h, use_causal_mask=True)])
        h = layers.LayerNormalization(epsilon=1e-5)(x)
        x = layers.Add()([x, layers.Dense(WIDTH)(layers.Dense(4 * WIDTH, activation="gelu")(h))])
    return keras.Model(ids, layers.Dense(VOCAB)(layers.LayerNormalization(epsilon=1e-5)(x)))


def _positions_layer(max_length: int):
    import keras

    class LearnedPositions(keras.layers.Layer):
        """Adds a learned embedding of `ops.arange(T)`."""

        def build(self, shape):
            self.table = self.add_weight(shape=(max_length, shape[-1]), initializer="random_normal")

        def call(self, x):
            return x + keras.ops.take(self.table, keras.ops.arange(keras.ops.shape(x)[1]), axis=0)

    return LearnedPositions()


def _prefix_sum(times: dict[int, float], n: int) -> float:
    """Seconds for prefixes 1..n from times measured at a few lengths (linear interpolation)."""
    lengths = sorted(times)
    return float(np.sum(np.interp(np.arange(1, n + 1), lengths, [times[k] for k in lengths])))


def run(config: CacheBenchConfig, workdir: Path | None = None, progress: Callable[[str], None] = lambda _: None) -> list:
    """One row per N: seconds of each variant, the ratios, and the cache's bytes per sequence."""
    import tensorflow as tf

    from exporter.keras_model import step_model_from_keras
    from exporter.pipeline import write_export

    rows = []
    with tempfile.TemporaryDirectory(prefix="seqexport-cache-bench-", dir=workdir) as tmp:
        for n in config.positions:
            progress(f"kv cache: exporting a {BLOCKS}-block causal transformer, max_length {n}")
            model = causal_model(n)
            path = Path(tmp) / f"gpt{n}"
            write_export(step_model_from_keras(model, max_length=n), path, name="gpt", source={"kind": "bench"},
                         options=ExportOptions(check_hvp=False, max_length=n))
            loaded = tf.saved_model.load(str(path))
            step, predict = loaded.signatures["step"], loaded.signatures["serving_default"]
            start = loaded.signatures["initial_state"]
            ids = np.random.default_rng(0).integers(0, VOCAB, size=(1, n)).astype("int32")
            sampled = sorted({int(k) for k in np.linspace(1, n, SAMPLED_PREFIXES)})

            def stepped():
                states = start(batch_size=tf.constant(1))
                for t in range(n):
                    out = step(x=tf.constant(ids[:, t]), **states)
                    states = {k: out[k] for k in states}

            def prefix_of(call):
                def timed() -> float:
                    times = {}
                    for k in sampled:
                        prefix = tf.constant(ids[:, :k])
                        started = time.perf_counter()
                        call(prefix)
                        times[k] = time.perf_counter() - started
                    return _prefix_sum(times, n)
                return timed

            progress(f"kv cache: timing {n} positions")
            medians = interleaved_medians({
                "step": stepped,
                "serving_default": prefix_of(lambda x: predict(inputs=x)),
                "keras": prefix_of(lambda x: model(x, training=False)),
            }, repeats=config.repeats)
            rows.append({"positions": n, "step_s": medians["step"], "serving_default_prefix_s": medians["serving_default"],
                         "keras_prefix_s": medians["keras"],
                         "ratio_vs_serving_default": medians["step"] / medians["serving_default"],
                         "ratio_vs_keras": medians["step"] / medians["keras"],
                         "cache_bytes_per_sequence": read_manifest(path).cache_bytes(),
                         "prefixes_timed": sampled})
    return rows
