"""The benchmark's targets, checked on a run's results: each names its figure, limit and verdict."""

from __future__ import annotations

from exporter.tools.bench_targets import as_json, check, markdown


def _row(model, batch, steps, kind, variant, ratio, us=10.0, floor_ratio=2.0):
    return {"model": model, "batch": batch, "steps": steps, "kind": kind, "variant": variant,
            "ratio_vs_keras": ratio, "us_per_step": us, "ratio_vs_floor": floor_ratio, "floor_us_per_step": 5.0,
            "recurrent_products_us_per_step": 6.0}


def test_every_target_is_checked_against_its_limit_and_the_ones_missed_say_so():
    rows = [_row("gru", 32, 1024, "forward", "keras", 1.0, us=40.0, floor_ratio=8.0),
            _row("gru", 32, 1024, "forward", "exported", 0.45, us=18.0, floor_ratio=3.6),
            _row("gru", 32, 1024, "forward", "exported_stream", 0.55, us=22.0, floor_ratio=4.4),
            _row("gru", 32, 1024, "forward", "ort_stream", 0.3, us=7.0, floor_ratio=1.4),
            _row("gru", 32, 1024, "gradient", "keras_grad", 1.0),
            _row("gru", 32, 1024, "gradient", "exported_grad", 0.71),
            _row("gru", 1, 128, "forward", "keras", 1.0), _row("gru", 1, 128, "forward", "exported", 0.79),
            _row("gru", 1, 128, "gradient", "exported_grad", 0.9)]  # no gradient target at B=1
    memory = [{"model": "gru", "variant": v, "batch": 32, "steps": 1024, "peak_mb_over_baseline": mb}
              for v, mb in (("keras_grad", 500.0), ("exported_grad", 510.0), ("keras", 70.0), ("exported", 60.0))]
    checks = check({"timings": rows, "memory": memory})
    verdicts = {(c.batch, c.steps, c.target): (round(c.measured, 3), c.limit, c.holds) for c in checks}
    assert verdicts == {
        (32, 1024, "exported / keras"): (0.45, 0.5, True),
        (32, 1024, "exported_stream / keras"): (0.55, 0.5, False),
        (32, 1024, "exported_grad / keras"): (0.71, 0.7, False),
        (32, 1024, "fastest forward / floor"): (1.4, 1.5, True),  # the largest B and T of the run only
        (1, 128, "exported / keras"): (0.79, 0.8, True),
        (32, 1024, "gradient peak memory / keras"): (1.02, 1.0, False),
    }
    floor = next(c for c in checks if c.target == "fastest forward / floor")
    assert floor.note == "ort_stream; the recurrent products alone: 1.20 of the floor"
    text = "\n".join(markdown(as_json(checks)))
    assert text.startswith("## Targets: 3 of 6 hold")
    assert "| gru | 32 | 1024 | exported_stream / keras | 0.550 | 0.50 | **no** |" in text
