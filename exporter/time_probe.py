"""Does a layer act on each timestep alone? Decided by running it, not by its class.

A layer may run inside the step function when, on a probe sequence `x [2, T, ...]`:
1. its output keeps the time axis: `out [2, T, ...]`;
2. its time Jacobian is block-diagonal: `d out[:, t] / d in[:, t'] = 0` for `t != t'`,
   checked with one vector-Jacobian product per output step under Gaussian weights
   (a nonzero block is missed with probability zero, as in exporter/verification/batch.py); for
   integer inputs (no derivative), changing step t' must leave every other step's
   output alone;
3. run on each step alone (a 1-step sequence), it gives the whole-sequence numbers:
   this also catches what no gradient shows (a statistic over time under
   `stop_gradient`, a layer that reads the sequence length) and proves it keeps
   nothing between calls.
The message of a refusal names the time offsets it found, e.g. "out[t] depends on in[t-1]".
"""

from __future__ import annotations

import numpy as np

PROBE_STEPS = 5
PROBE_BATCH = 2
PROBE_SEED = 11


def _offset(delta: int) -> str:
    return "in[t]" if delta == 0 else f"in[t{delta:+d}]"


def probe_input(feature_shape: tuple, dtype: str, steps: int, vocab: int | None, seed: int = PROBE_SEED):
    """A `[PROBE_BATCH, steps, *feature_shape]` probe: ids in 1..vocab-1, or Gaussian floats."""
    rng = np.random.default_rng(seed)
    shape = (PROBE_BATCH, steps, *feature_shape)
    if np.issubdtype(np.dtype(dtype), np.integer):
        return rng.integers(1, max(2, vocab or 10), size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def _numpy(value) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _float_offsets(call, x: np.ndarray, steps: int) -> set[int]:
    import tensorflow as tf

    rng = np.random.default_rng(PROBE_SEED + 1)
    offsets = set()
    source = tf.constant(x)
    for t in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(source)
            out = tf.convert_to_tensor(call(source))
            total = tf.reduce_sum(tf.cast(out[:, t], tf.float64) * rng.normal(size=out[:, t].shape))
        grad = tape.gradient(total, source, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        magnitude = np.abs(_numpy(grad)).reshape(PROBE_BATCH, steps, -1).max(axis=(0, 2))
        offsets |= {s - t for s in range(steps) if s != t and magnitude[s] > 0.0}
    return offsets


def _integer_offsets(call, x: np.ndarray, whole: np.ndarray, steps: int, vocab: int | None) -> set[int]:
    offsets = set()
    for s in range(steps):
        changed = x.copy()
        changed[:, s] = changed[:, s] % max(2, vocab or 10) + 1
        moved = np.abs(_numpy(call(changed)).astype(np.float64) - whole).reshape(PROBE_BATCH, steps, -1)
        offsets |= {s - t for t in range(steps) if t != s and moved[:, t].max() > 0.0}
    return offsets


def why_not_per_step(layer, feature_shape: tuple, dtype: str, *, steps: int | None = None,
                     vocab: int | None = None) -> str | None:
    """None when `layer` passes the probe (module docstring); else the reason, for a message.

    Args:
        feature_shape: the layer's per-step input shape (after batch and time).
        dtype: its input dtype.
        steps: the time length the layer was built for, if fixed; else `PROBE_STEPS`.
        vocab: for integer inputs, the ids to draw from.
    """
    steps = steps or PROBE_STEPS
    x = probe_input(feature_shape, dtype, steps, vocab)

    def call(inputs):
        return layer(inputs, training=False)

    try:
        whole = _numpy(call(x))
    except Exception as exc:  # noqa: BLE001  user layers can fail any way; the message says how
        return f"it fails on a {steps}-step probe sequence ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    if whole.ndim < 2 or whole.shape[:2] != (PROBE_BATCH, steps):
        return (f"it does not keep the time axis (a [{PROBE_BATCH}, {steps}, ...] probe came out "
                f"{list(whole.shape)})")
    if not np.array_equal(_numpy(call(x)), whole, equal_nan=True):
        return "it gives other numbers when called twice on the same input (it keeps state or is random at inference)"
    if np.issubdtype(x.dtype, np.integer):
        offsets = _integer_offsets(call, x, whole.astype(np.float64), steps, vocab)
    elif np.issubdtype(whole.dtype, np.floating) or np.issubdtype(whole.dtype, np.complexfloating):
        offsets = _float_offsets(call, x, steps)
    else:
        offsets = set()
    if offsets:
        return f"out[t] depends on {', '.join(_offset(d) for d in sorted(offsets))}"
    return one_step_mismatch(lambda inputs: call(inputs[0]), [x], whole)


def one_step_mismatch(call, inputs: list[np.ndarray], whole: np.ndarray) -> str | None:
    """None when `call` on each step alone (`[B, 1, ...]` slices of every input) gives `whole[:, t]`;
    else why not. `call` takes the list of inputs; `whole` is its output on the whole sequences."""
    worst = 0.0
    for t in range(whole.shape[1]):
        want = whole[:, t : t + 1]
        try:
            alone = _numpy(call([x[:, t : t + 1] for x in inputs]))
        except Exception as exc:  # noqa: BLE001
            return f"it fails on a 1-step sequence ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        if alone.shape != want.shape:
            return f"on a 1-step sequence it gives shape {list(alone.shape)}, not {list(want.shape)}"
        if np.issubdtype(whole.dtype, np.number):
            diff = np.abs(alone.astype(np.float64) - want.astype(np.float64))
            worst = max(worst, float(np.max(diff / (1.0 + np.abs(want.astype(np.float64))), initial=0.0)))
        elif not np.array_equal(alone, want):
            worst = np.inf
    tolerance = 1e-2 if whole.dtype in (np.float16,) or "bfloat16" in str(whole.dtype) else 1e-5
    if worst > tolerance:
        return (f"run on one step alone it gives other numbers than on the whole sequence "
                f"(max relative difference {worst:.2e} > {tolerance:g})")
    return None


def whole_call_traces(layer, feature_shape: tuple, dtype: str, *, steps: int | None = None,
                      vocab: int | None = None) -> bool:
    """Whether `layer` on a whole sequence gives the same numbers traced with an unknown time length
    (as the exported signatures trace it) as on a fixed one: some Keras layers read a static
    time length at trace time (`TimeDistributed` returned half the steps)."""
    import tensorflow as tf

    steps = steps or PROBE_STEPS
    x = probe_input(feature_shape, dtype, steps, vocab)
    try:
        eager = _numpy(layer(x, training=False))
        spec = tf.TensorSpec([None, None, *feature_shape], tf.as_dtype(dtype))
        traced = _numpy(tf.function(lambda v: layer(v, training=False), input_signature=[spec])(tf.constant(x)))
    except Exception:  # noqa: BLE001  then the whole-sequence call is not used
        return False
    return traced.shape == eager.shape and np.allclose(traced, eager, rtol=1e-5, atol=1e-6, equal_nan=True)
