"""The speed and memory targets the exports are held to, checked on one benchmark run's results.

Why: a run's tables hold every figure, but whether a target holds must not depend on who reads
them. Each check names its target, the figure measured, the limit and whether it holds; bench.md
lists them. Nothing fails on them: speed is measured in the benchmark, never asserted in tests.
"""

from __future__ import annotations

import dataclasses

FORWARD_LIMIT = 0.5  # exported `serving_default` and `stream` vs the Keras call, B > 1
FORWARD_LIMIT_B1 = 0.8  # the same at B=1, where a call's own cost weighs more
GRADIENT_LIMIT = 0.7  # the gradient through `stream` vs Keras's, B > 1
FLOOR_LIMIT = 1.5  # the fastest forward variant vs the arithmetic floor, largest B and T of the run


@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetCheck:
    model: str
    batch: int
    steps: int
    target: str
    measured: float
    limit: float
    note: str = ""

    @property
    def holds(self) -> bool:
        return self.measured <= self.limit


def check(results: dict) -> list[TargetCheck]:
    """Every target that `results` (from `benchmark.run`) has the figures for, in the order of its rows."""
    rows = results["timings"]
    checks = []
    largest = (max(r["batch"] for r in rows), max(r["steps"] for r in rows)) if rows else None
    for key in dict.fromkeys((r["model"], r["batch"], r["steps"]) for r in rows):
        model, batch, steps = key
        cell = {(r["kind"], r["variant"]): r for r in rows if (r["model"], r["batch"], r["steps"]) == key}
        forward_limit = FORWARD_LIMIT_B1 if batch == 1 else FORWARD_LIMIT
        limits = {("forward", "exported"): forward_limit, ("forward", "exported_stream"): forward_limit,
                  **({("gradient", "exported_grad"): GRADIENT_LIMIT} if batch > 1 else {})}
        checks += [TargetCheck(model=model, batch=batch, steps=steps, target=f"{variant} / keras",
                               measured=cell[kind, variant]["ratio_vs_keras"], limit=limit)
                   for (kind, variant), limit in limits.items() if (kind, variant) in cell]
        forward = [r for (kind, _), r in cell.items() if kind == "forward"]
        if (batch, steps) == largest and forward:
            fastest = min(forward, key=lambda r: r["us_per_step"])
            products = fastest.get("recurrent_products_us_per_step")
            note = (f"{fastest['variant']}; the recurrent products alone: "
                    f"{products / fastest['floor_us_per_step']:.2f} of the floor") if products else fastest["variant"]
            checks.append(TargetCheck(model=model, batch=batch, steps=steps, target="fastest forward / floor",
                                      measured=fastest["ratio_vs_floor"], limit=FLOOR_LIMIT, note=note))
    return checks + _memory_checks(results.get("memory", []))


def _memory_checks(memory: list[dict]) -> list[TargetCheck]:
    """The gradient through `stream` at most Keras's gradient in peak memory, per model."""
    peaks = {(m["model"], m["variant"]): m for m in memory}
    checks = []
    for model in dict.fromkeys(m["model"] for m in memory):
        ours, keras = peaks.get((model, "exported_grad")), peaks.get((model, "keras_grad"))
        if ours is not None and keras is not None and keras["peak_mb_over_baseline"] > 0:
            checks.append(TargetCheck(model=model, batch=ours["batch"], steps=ours["steps"],
                                      target="gradient peak memory / keras",
                                      measured=ours["peak_mb_over_baseline"] / keras["peak_mb_over_baseline"],
                                      limit=1.0, note=f"{ours['peak_mb_over_baseline']:.0f} vs "
                                                      f"{keras['peak_mb_over_baseline']:.0f} MB"))
    return checks


def as_json(checks: list[TargetCheck]) -> list[dict]:
    """The checks as `bench.json` keeps them (`holds` included), what bench.md and the CLI read."""
    return [dict(dataclasses.asdict(c), holds=c.holds) for c in checks]


def markdown(targets: list[dict]) -> list[str]:
    """bench.md's targets part (from `as_json`'s rows): a count, then one line per check."""
    held = sum(t["holds"] for t in targets)
    lines = [f"## Targets: {held} of {len(targets)} hold", "",
             "| model | B | T | target | measured | limit | holds | note |", "|---|---|---|---|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['model']} | {t['batch']} | {t['steps']} | {t['target']} | {t['measured']:.3f} | "
                     f"{t['limit']:.2f} | {'yes' if t['holds'] else '**no**'} | {t['note']} |")
    return lines
