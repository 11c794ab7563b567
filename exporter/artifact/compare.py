"""Compare two arrays under a stated tolerance and say where they differ most."""

from __future__ import annotations

import numpy as np

from exporter.artifact.specs import CheckResult, Tolerance


def compare(
    check: str, signature: str, tensor: str, got, want, tolerance: Tolerance
) -> CheckResult:
    """One `CheckResult`: max abs / max rel error and the worst element's index.

    Passes when every element has |got - want| <= atol + rtol * |want|.
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    common = dict(check=check, signature=signature, tensor=tensor, atol=tolerance.atol, rtol=tolerance.rtol)
    if got.shape != want.shape:
        return CheckResult(
            **common, passed=False, message=f"shape {list(got.shape)} != expected {list(want.shape)}"
        )
    if got.size == 0:
        return CheckResult(**common, passed=True, max_abs=0.0, max_rel=0.0, message="empty")
    diff = np.abs(got - want)
    both_nan = np.isnan(got) & np.isnan(want)
    diff = np.where(both_nan, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)
    rel = diff / np.maximum(np.abs(want), np.finfo(np.float64).tiny)
    excess = diff - (tolerance.atol + tolerance.rtol * np.abs(want))
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
    passed = bool(np.all(excess <= 0))
    message = ""
    if not passed:
        message = (
            f"worst element {list(int(i) for i in worst)}: got {got[worst]:.7g}, "
            f"expected {want[worst]:.7g}"
        )
    return CheckResult(
        **common,
        passed=passed,
        max_abs=float(diff.max()),
        max_rel=float(np.where(diff == 0, 0.0, rel).max()),
        worst_index=tuple(int(i) for i in worst),
        message=message,
    )


def failed(check: str, signature: str, tensor: str, message: str) -> CheckResult:
    """A check that could not produce numbers (an error while running it)."""
    return CheckResult(check=check, signature=signature, tensor=tensor, passed=False, message=message)
