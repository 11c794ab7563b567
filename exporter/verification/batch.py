"""Batch independence: does row b of the outputs depend on row b' != b of the inputs?

Only then may a server batch one client's request with another's. Computed, not
assumed, from the `(batch, batch)` blocks of the input Jacobian `J[b, i; b', j] =
d out[b, i] / d in[b', j]` (the autodiff guide's `batch_jacobian` discussion):

- small outputs: the exact Jacobian (`tape.jacobian`, one backward pass per output
  element);
- otherwise, one vector-Jacobian product per batch row: for row b draw Gaussian
  weights `w_b` over the elements of `out[b]` (zero on every other row) and take
  `g = d <w_b, out[b]> / d in`. Its row b' is `J[b, :; b', :]^T w_b`. If that block
  is nonzero, the `w` with `J^T w = 0` form a proper linear subspace, which a
  Gaussian draw hits with probability zero: a mixing block is missed with
  probability zero, at a cost of B backward passes instead of one per output
  element (a 3.2 M-parameter LSTM stack has thousands of output elements once its
  states are counted).

Integer inputs (token ids) have no derivative: one row's ids are changed and the
other rows' outputs watched (one forward pass per row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from exporter.artifact.specs import BATCH_INDEPENDENCE_RTOL, CheckResult

# Up to this many float output elements in the probe batch the exact Jacobian is taken;
# above it, the O(B) random projections.
EXACT_JACOBIAN_MAX_ELEMENTS = 64
PROJECTION_SEED = 7


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchBlocks:
    """Largest off-diagonal (`offdiag_max`) and diagonal (`diag_max`) block magnitude.

    `method` says how they were found; `backward_passes` counts the vector-Jacobian
    products taken (the cost that must not grow with the output size), `forward_passes`
    the extra forward calls for integer inputs.
    """

    offdiag_max: float
    diag_max: float
    worst: str
    method: str = "exact Jacobian"
    backward_passes: int = 0
    forward_passes: int = 0

    @property
    def how(self) -> str:
        """Short: "exact Jacobian", or "3 random projections" (one backward pass each)."""
        return self.method.replace("random projections", f"{self.backward_passes} random projections")

    @property
    def independent(self) -> bool:
        return self.offdiag_max <= BATCH_INDEPENDENCE_RTOL * max(self.diag_max, 1e-30)

    def to_check(self, signature: str) -> CheckResult:
        verdict = (
            "independent: server-side batching allowed"
            if self.independent
            else f"rows MIX (worst: {self.worst}): server-side batching refused"
        )
        return CheckResult(
            check="batch independence", signature=signature, tensor="d out[b]/d in[b'≠b]",
            passed=True, max_abs=self.offdiag_max,
            max_rel=self.offdiag_max / self.diag_max if self.diag_max else 0.0,
            atol=0.0, rtol=BATCH_INDEPENDENCE_RTOL,
            message=f"{verdict} ({self.how})",
        )


def offdiagonal_blocks(
    call: Callable[[dict], dict], feed: dict[str, np.ndarray], *,
    exact_max_elements: int = EXACT_JACOBIAN_MAX_ELEMENTS,
) -> BatchBlocks:
    """The batch blocks of every float output w.r.t. every batched input of `call(feed)`.

    The exact Jacobian when the probe's float outputs have at most `exact_max_elements`
    elements (and TF can take it under a persistent tape), else one random projection
    per row (module docstring: why that misses a mixing block with probability zero).
    """
    import tensorflow as tf

    outputs = call({k: tf.constant(v) for k, v in feed.items()})
    elements = sum(int(np.prod(v.shape)) for v in outputs.values() if v.dtype.is_floating)
    floats = None
    if elements <= exact_max_elements:
        try:
            floats = _from_jacobian(call, feed)
        except (ValueError, LookupError) as exc:
            # A reloaded loop that captures variable handles cannot run under a persistent tape.
            if "handle data" not in str(exc):
                raise
    if floats is None:
        floats = _from_row_projections(call, feed)
    ints = _from_integer_changes(call, feed, {k: v.numpy() for k, v in outputs.items()})
    worst = floats if floats.offdiag_max >= ints.offdiag_max else ints
    return BatchBlocks(
        offdiag_max=worst.offdiag_max, diag_max=max(floats.diag_max, ints.diag_max), worst=worst.worst,
        method=floats.method if not ints.forward_passes else f"{floats.method} + id changes",
        backward_passes=floats.backward_passes, forward_passes=ints.forward_passes,
    )


def _float_sources(tensors: dict) -> dict:
    return {k: t for k, t in tensors.items() if t.dtype.is_floating}


def _from_row_projections(call: Callable[[dict], dict], feed: dict[str, np.ndarray]) -> BatchBlocks:
    """One vector-Jacobian product per row b, with Gaussian weights on out[b] only."""
    import tensorflow as tf

    batch = next(iter(feed.values())).shape[0]
    rng = np.random.default_rng(PROJECTION_SEED)
    offdiag, diag, worst, passes = 0.0, 0.0, "none", 0
    for row in range(batch):
        tensors = {k: tf.constant(v) for k, v in feed.items()}
        sources = _float_sources(tensors)
        if not sources:
            break
        with tf.GradientTape() as tape:
            for tensor in sources.values():
                tape.watch(tensor)
            outputs = call(tensors)
            terms = [
                tf.reduce_sum(tf.cast(out[row], tf.float64) * rng.normal(size=out[row].shape))
                for _, out in sorted(outputs.items()) if out.dtype.is_floating
            ]
            total = tf.add_n(terms) if terms else tf.constant(0.0, tf.float64)
        grads = tape.gradient(total, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        passes += 1
        for key, grad in sorted(grads.items()):
            magnitude = np.abs(grad.numpy()).reshape(batch, -1).max(axis=1, initial=0.0)
            diag = max(diag, float(magnitude[row]))
            others = np.delete(magnitude, row)
            if others.size and float(others.max()) > offdiag:
                offdiag = float(others.max())
                other = int(np.delete(np.arange(batch), row)[int(others.argmax())])
                worst = f"outputs[{row}] (random projection) / d {key}[{other}]"
    return BatchBlocks(offdiag_max=offdiag, diag_max=diag, worst=worst, method="random projections",
                       backward_passes=passes)


def _from_jacobian(call: Callable[[dict], dict], feed: dict[str, np.ndarray]) -> BatchBlocks:
    """The full Jacobian of each float output w.r.t. the float inputs, one call per input dtype.

    Per dtype because TF's loop-based `jacobian` stacks the gradients in a TensorArray of
    the target's dtype: a float32 output and a float64 input (or state) cannot share one.
    """
    import tensorflow as tf

    tensors = {k: tf.constant(v) for k, v in feed.items()}
    batch = next(iter(feed.values())).shape[0]
    float_keys = sorted(_float_sources(tensors))
    offdiag, diag, worst, passes = 0.0, 0.0, "none", 0
    if not float_keys:
        return BatchBlocks(offdiag_max=0.0, diag_max=0.0, worst=worst)
    groups: dict = {}
    for key in float_keys:
        groups.setdefault(tensors[key].dtype, []).append(key)
    with tf.GradientTape(persistent=True) as tape:
        for key in float_keys:
            tape.watch(tensors[key])
        outputs = call(tensors)
        targets = {(out_key, dtype): tf.cast(out, dtype) for out_key, out in outputs.items()
                   if out.dtype.is_floating for dtype in groups}
    for (out_key, dtype), target in sorted(targets.items(), key=lambda item: (item[0][0], item[0][1].name)):
        keys = groups[dtype]
        # [B, ...out, B, ...in] per input; pfor cannot vectorise through a while_loop.
        jacobians = tape.jacobian(target, [tensors[k] for k in keys],
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO, experimental_use_pfor=False)
        passes += int(np.prod(target.shape))
        for in_key, jacobian in zip(keys, jacobians):
            width = int(np.prod(feed[in_key].shape[1:]) or 1)
            off, on = _split(jacobian.numpy().reshape(batch, -1, batch, width), batch)
            diag = max(diag, on)
            if off > offdiag:
                offdiag, worst = off, f"d {out_key}/d {in_key}"
    del tape
    return BatchBlocks(offdiag_max=offdiag, diag_max=diag, worst=worst, backward_passes=passes)


def _split(block: np.ndarray, batch: int) -> tuple[float, float]:
    """`block` is [B, n, B, m]: (max off-diagonal, max diagonal) magnitude."""
    eye = np.eye(batch, dtype=bool)[:, None, :, None]
    magnitude = np.abs(block)
    return float(np.max(np.where(eye, 0.0, magnitude))), float(np.max(np.where(eye, magnitude, 0.0)))


def _changed_row(values: np.ndarray, row: int) -> np.ndarray:
    """`values` with row `row` changed: ids rolled and moved up (within range), a mask flipped, text taken
    from another row."""
    changed = values.copy()
    if values.dtype == bool:
        changed[row] = ~values[row]
    elif values.dtype.kind in "SO":
        changed[row] = values[(row + 1) % len(values)] if len(values) > 1 else values[row] + b" a"
    else:
        changed[row] = np.roll(values[row], 1) + 1 if values[row].size > 1 else values[row] + 1
        changed = np.minimum(changed, values.max())
    return changed


def _from_integer_changes(call: Callable[[dict], dict], feed: dict[str, np.ndarray], base: dict) -> BatchBlocks:
    """Token ids, masks and text have no derivative: change one row's values and watch the other rows' outputs."""
    import tensorflow as tf

    batch = next(iter(feed.values())).shape[0]
    int_keys = [k for k, v in feed.items() if (np.issubdtype(v.dtype, np.integer) or v.dtype.kind in "bSO")
                and v.ndim >= 2]
    offdiag, diag, worst, passes = 0.0, 0.0, "none", 0
    for in_key in int_keys:
        for row in range(batch):
            changed = dict(feed)
            changed[in_key] = _changed_row(feed[in_key], row)
            moved = {k: v.numpy() for k, v in call({k: tf.constant(v) for k, v in changed.items()}).items()}
            passes += 1
            for out_key, value in moved.items():
                if not np.issubdtype(value.dtype, np.floating):
                    continue
                delta = np.abs(value - base[out_key]).reshape(batch, -1)
                others = np.delete(delta, row, axis=0)
                diag = max(diag, float(delta[row].max()))
                if others.size and float(others.max()) > offdiag:
                    offdiag, worst = float(others.max()), f"{out_key} after changing {in_key}[{row}]"
    return BatchBlocks(offdiag_max=offdiag, diag_max=diag, worst=worst, method="id changes", forward_passes=passes)
