"""Random probe values for the inputs beside the main sequence, one way for every capture.

`exporter.golden` probes the signatures with them and `exporter.generate_reference` probes
`generate`; kept here, below both, so the two cannot drift apart (a static input the goldens
probe with ids 0/1 while `generate` probes it with floats would check nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exporter.artifact.specs import InputSpec


def static_probes(specs: Sequence[InputSpec], rng, batch: int) -> dict[str, np.ndarray]:
    """The static inputs' probes, `[B, *shape]` each: one value per example, seen at every step."""
    feed = {}
    for spec in specs:
        if spec.dtype.startswith("int") or spec.dtype == "bool":
            feed[spec.name] = rng.integers(0, 2, size=(batch, *spec.shape)).astype(spec.dtype)
        else:
            feed[spec.name] = rng.normal(size=(batch, *spec.shape)).astype(spec.dtype)
    return feed


def context_steps(spec: InputSpec, steps: int) -> int:
    """A context's probe length: its own fixed length, else longer than the decoder's `steps` (an
    encoder and a decoder of different lengths are the common case)."""
    return spec.steps if spec.steps > 0 else steps + 3


def context_probes(specs: Sequence[InputSpec], rng, batch: int, steps: int, *,
                   padded: bool) -> dict[str, np.ndarray]:
    """The context inputs' probes, `[B, S, ...]` each; `padded`: id rows post-padded with 0 (a padded
    source sentence: `Embedding(mask_zero=True)` masks it)."""
    return {spec.name: timed_probe(spec, rng, batch, context_steps(spec, steps), padded=padded) for spec in specs}


def timed_probe(spec: InputSpec, rng, batch: int, steps: int, *, padded: bool = False) -> np.ndarray:
    """`[B, steps, *spec.shape]` of the input's kind: a mask's false steps, bools, ids drawn from its
    vocabulary (rows after the first post-padded with 0 when `padded`), floats at random."""
    shape = (batch, steps, *spec.shape)
    if spec.mask:
        return mask_probe(batch, steps, rng).astype(spec.dtype)
    if spec.dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if spec.dtype.startswith("int"):
        ids = rng.integers(1, spec.vocab or 2, size=shape).astype(spec.dtype)
        for row in range(1, batch if padded else 0):
            ids[row, max(1, steps - row):] = 0
        return ids
    return rng.normal(size=shape).astype(spec.dtype)


def mask_probe(batch: int, steps: int, rng, shift: int = 0) -> np.ndarray:
    """`[B, T]` bool with false steps where users have them: row 0 whole, row 1 false at the start,
    row 2 false in the middle and at the end, further rows at random (each row keeps a true step).
    `shift` moves the patterns one row down (another probe, as the `inputs` check needs)."""
    rows = [np.ones(steps, bool)]
    start = np.ones(steps, bool)
    start[: max(1, steps // 3)] = False
    rows.append(start)
    holes = np.ones(steps, bool)
    holes[[steps // 2, steps - 1]] = False
    holes[0] = True
    rows.append(holes)
    while len(rows) < batch + shift:
        row = rng.random(steps) < 0.7
        row[rng.integers(steps)] = True
        rows.append(row)
    return np.stack(rows[shift:shift + batch])
