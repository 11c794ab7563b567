"""Side-by-side timing: every variant in one process, interleaved, medians.

On a shared, noisy machine a load spike or a frequency change hits whichever
variant runs at that moment; rotating the order each repeat spreads it over all
of them, and the median drops the outliers it leaves.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def interleaved_medians(variants: Mapping[str, Callable[[], object]], *, repeats: int,
                        warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each variant, the order rotated by one at each repeat.

    A variant that returns a `float` reports its own time (a child process timing
    itself, without the round trip); any other return value is ignored and the call
    is timed here.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            started = time.perf_counter()
            result = variants[name]()
            elapsed = time.perf_counter() - started
            samples[name].append(result if isinstance(result, float) else elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}
