"""Checks for a SavedModel seqexport did not make: no manifest, no golden, so no references.

What can still be known: it loads, every signature runs on inputs built from its
own specs and gives finite outputs, and gradients exist (a lost custom gradient
shows up here as it would in production).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.artifact.compare import failed
from exporter.artifact.specs import CheckResult
from exporter.verification.explain import explain

_DYNAMIC_SIZE = 2


def _probe(spec, rng):
    shape = [(_DYNAMIC_SIZE if d is None else d) for d in spec.shape]
    if spec.dtype.is_floating:
        return rng.normal(size=shape).astype(spec.dtype.as_numpy_dtype)
    if spec.dtype.is_integer:
        return np.full(shape, _DYNAMIC_SIZE if not shape else 1, dtype=spec.dtype.as_numpy_dtype)
    return None


def generic_checks(export_dir: Path) -> list[CheckResult]:
    import tensorflow as tf

    from exporter.gradients import outputs_and_gradients

    try:
        loaded = tf.saved_model.load(str(export_dir))
    except Exception as exc:  # noqa: BLE001
        return [failed("reload", "-", "*", f"tf.saved_model.load failed: {explain(exc)}")]
    rng = np.random.default_rng(0)
    variables = list(getattr(loaded, "trainable_variables", []))
    results = []
    note = "no seqexport manifest: ran on inputs built from the signature's specs"
    for name, function in sorted(loaded.signatures.items()):
        specs = function.structured_input_signature[1]
        feed = {k: _probe(s, rng) for k, s in specs.items()}
        if any(v is None for v in feed.values()):
            results.append(CheckResult(check="runs", signature=name, tensor="*", passed=True,
                                       message="not run: a non-numeric input"))
            continue
        call = lambda f, fn=function: fn(**f)  # noqa: E731
        try:
            outputs = {k: v.numpy() for k, v in call({k: tf.constant(v) for k, v in feed.items()}).items()}
        except Exception as exc:  # noqa: BLE001
            results.append(failed("runs", name, "*", explain(exc)))
            continue
        for key, value in sorted(outputs.items()):
            finite = bool(np.all(np.isfinite(value))) if np.issubdtype(value.dtype, np.floating) else True
            results.append(CheckResult(check="runs", signature=name, tensor=key, passed=finite,
                                       message=note if finite else "non-finite values in the output"))
        weights = {k: np.ones_like(v, dtype=np.float64) for k, v in outputs.items()
                   if np.issubdtype(v.dtype, np.floating)}
        if not weights:
            continue
        try:
            outputs_and_gradients(call, feed, weights, variables)
            results.append(CheckResult(check="gradients", signature=name, tensor="*", passed=True,
                                       message="gradients defined (no reference to compare with)"))
        except Exception as exc:  # noqa: BLE001
            results.append(failed("gradients", name, "*", explain(exc)))
    return results
