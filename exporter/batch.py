"""Batch independence: does row b of the outputs depend on row b' != b of the inputs?

Only then may a server batch one client's request with another's. Computed, not
assumed: the `(batch, batch)` blocks of the input Jacobian (`tape.jacobian`, as in
the autodiff guide's `batch_jacobian` discussion), and for integer inputs (token
ids, no derivative) the change in other rows' outputs when one row's ids change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from exporter.specs import BATCH_INDEPENDENCE_RTOL, CheckResult


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchBlocks:
    """Largest |d out[b] / d in[b']| over b != b' (`offdiag_max`) and over b == b' (`diag_max`)."""

    offdiag_max: float
    diag_max: float
    worst: str

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
            check="batch independence", signature=signature, tensor="d out[b]/d in[b'], b != b'",
            passed=True, max_abs=self.offdiag_max,
            max_rel=self.offdiag_max / self.diag_max if self.diag_max else 0.0,
            atol=0.0, rtol=BATCH_INDEPENDENCE_RTOL, message=verdict,
        )


def _split(block: np.ndarray, batch: int) -> tuple[float, float]:
    """`block` is [B, ..., B, ...] flattened to [B, n, B, m]: (max off-diagonal, max diagonal)."""
    eye = np.eye(batch, dtype=bool)[:, None, :, None]
    magnitude = np.abs(block)
    return float(np.max(np.where(eye, 0.0, magnitude))), float(np.max(np.where(eye, magnitude, 0.0)))


def offdiagonal_blocks(call: Callable[[dict], dict], feed: dict[str, np.ndarray]) -> BatchBlocks:
    """Jacobian blocks of every float output w.r.t. every batched input of `call(feed)`.

    The exact Jacobian (`tape.jacobian`) where TF can take it; a reloaded function whose
    loop captures variable handles cannot be called under a persistent tape, and then
    each output row's gradient under random weights stands in: block (b, b') of that
    vector-Jacobian product is nonzero with probability 1 when the block is.
    """
    try:
        floats = _from_jacobian(call, feed)
    except (ValueError, LookupError) as exc:
        if "handle data" not in str(exc):
            raise
        floats = _from_row_gradients(call, feed)
    ints = _from_integer_changes(call, feed)
    worst = floats if floats.offdiag_max >= ints.offdiag_max else ints
    return BatchBlocks(offdiag_max=worst.offdiag_max, diag_max=max(floats.diag_max, ints.diag_max),
                       worst=worst.worst)


def _from_row_gradients(call: Callable[[dict], dict], feed: dict[str, np.ndarray]) -> BatchBlocks:
    import tensorflow as tf

    batch = next(iter(feed.values())).shape[0]
    rng = np.random.default_rng(7)
    offdiag, diag, worst = 0.0, 0.0, "none"
    for row in range(batch):
        tensors = {k: tf.constant(v) for k, v in feed.items()}
        sources = {k: t for k, t in tensors.items() if t.dtype.is_floating}
        with tf.GradientTape() as tape:
            for tensor in sources.values():
                tape.watch(tensor)
            outputs = call(tensors)
            total = tf.add_n([
                tf.reduce_sum(tf.cast(out[row], tf.float64) * rng.normal(size=out[row].shape))
                for out in outputs.values() if out.dtype.is_floating
            ])
        grads = tape.gradient(total, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        for key, grad in grads.items():
            magnitude = np.abs(grad.numpy()).reshape(batch, -1).max(axis=1)
            diag = max(diag, float(magnitude[row]))
            others = np.delete(magnitude, row)
            if others.size and float(others.max()) > offdiag:
                offdiag, worst = float(others.max()), f"outputs[{row}] (random projection) / d {key}"
    return BatchBlocks(offdiag_max=offdiag, diag_max=diag, worst=worst)


def _from_jacobian(call: Callable[[dict], dict], feed: dict[str, np.ndarray]) -> BatchBlocks:
    import tensorflow as tf

    tensors = {k: tf.constant(v) for k, v in feed.items()}
    batch = next(iter(feed.values())).shape[0]
    float_keys = [k for k, t in tensors.items() if t.dtype.is_floating]
    offdiag, diag, worst = 0.0, 0.0, "none"
    with tf.GradientTape(persistent=True) as tape:
        for key in float_keys:
            tape.watch(tensors[key])
        outputs = call(tensors)
    for out_key, out in sorted(outputs.items()):
        if not out.dtype.is_floating:
            continue
        for in_key in float_keys:
            # The full Jacobian [B, ...out, B, ...in]; pfor cannot vectorise through a while_loop.
            jacobian = tape.jacobian(out, tensors[in_key], unconnected_gradients=tf.UnconnectedGradients.ZERO,
                                     experimental_use_pfor=False)
            block = jacobian.numpy().reshape(batch, -1, batch, int(np.prod(feed[in_key].shape[1:]) or 1))
            off, on = _split(block, batch)
            diag = max(diag, on)
            if off > offdiag:
                offdiag, worst = off, f"d {out_key}/d {in_key}"
    del tape
    return BatchBlocks(offdiag_max=offdiag, diag_max=diag, worst=worst)


def _from_integer_changes(call: Callable[[dict], dict], feed: dict[str, np.ndarray]) -> BatchBlocks:
    """Token ids have no derivative: change one row's ids and watch the other rows' outputs."""
    import tensorflow as tf

    batch = next(iter(feed.values())).shape[0]
    int_keys = [k for k, v in feed.items() if np.issubdtype(v.dtype, np.integer) and v.ndim >= 2]
    offdiag, diag, worst = 0.0, 0.0, "none"
    if not int_keys:
        return BatchBlocks(offdiag_max=0.0, diag_max=0.0, worst=worst)
    base = {k: v.numpy() for k, v in call({k: tf.constant(v) for k, v in feed.items()}).items()}
    for in_key in int_keys:
        for row in range(batch):
            changed = dict(feed)
            ids = feed[in_key].copy()
            ids[row] = np.roll(ids[row], 1) + 1 if ids[row].size > 1 else ids[row] + 1
            changed[in_key] = np.minimum(ids, feed[in_key].max())
            moved = {k: v.numpy() for k, v in call({k: tf.constant(v) for k, v in changed.items()}).items()}
            for out_key, value in moved.items():
                if not np.issubdtype(value.dtype, np.floating):
                    continue
                delta = np.abs(value - base[out_key]).reshape(batch, -1)
                others = np.delete(delta, row, axis=0)
                diag = max(diag, float(delta[row].max()))
                if others.size and float(others.max()) > offdiag:
                    offdiag, worst = float(others.max()), f"{out_key} after changing {in_key}[{row}]"
    return BatchBlocks(offdiag_max=offdiag, diag_max=diag, worst=worst)
