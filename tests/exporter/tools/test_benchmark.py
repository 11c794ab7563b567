"""`scripts/bench.py --quick` runs once; every variant matches the Keras model and the JSON is whole.

Benchmarks are not timed tests: nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import REPO_ROOT

pytestmark = pytest.mark.slow
ROOT = REPO_ROOT
ROW_FIELDS = {"model", "batch", "steps", "kind", "variant", "us_per_step", "throughput_steps_per_s",
              "ratio_vs_keras", "floor_us_per_step", "ratio_vs_floor", "matches_keras", "excess_over_tolerance"}


def test_quick_bench(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="200")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").read_text().startswith("| model | B | T | serving_default / keras |")
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    rows = results["timings"]
    assert {r["variant"] for r in rows} >= {"keras", "exported", "exported_stream", "exported_xla", "tf_step_loop",
                                            "numpy_step_loop", "litert_step_loop", "ort_step_loop", "ort_stream",
                                            "keras_grad",
                                            "exported_grad"}
    assert {r["model"] for r in rows} == {"lstm", "gru", "srnn"}
    for row in rows:
        assert ROW_FIELDS <= set(row), row
        assert row["matches_keras"], row  # the numpy step loop computes the model too
        assert row["floor_us_per_step"] > 0 and row["ratio_vs_floor"] > 0, row
        if row["kind"] == "forward":  # forward rows carry the recurrent products' time
            assert row["recurrent_products_us_per_step"] > 0 and row["ratio_vs_recurrent_products"] > 0, row
    # The numpy loop's child says which BLAS it ran, with one thread.
    blas = results["machine"]["numpy_blas"]
    assert blas and all(b["num_threads"] == 1 for b in blas), blas
    assert all(g > 0 for g in results["machine"]["gemm_gflops"])
    assert results["memory"] and all("peak_mb_over_baseline" in m for m in results["memory"])
    # Every model's targets are checked (whether they hold is the run's finding, not this test's).
    targets = {(t["model"], t["target"]) for t in results["targets"]}
    assert {("lstm", "exported / keras"), ("gru", "exported_grad / keras"), ("srnn", "fastest forward / floor"),
            ("lstm", "gradient peak memory / keras")} <= targets, targets
    assert "## Targets: " in (tmp_path / "bench.md").read_text()

    # The export-cost section: both tools timed, seqexport's phases and checks, the verifier's memory.
    cost, whole = results["export_cost"]  # an LSTM stack, and a Bidirectional(LSTM) text classifier
    assert (cost["kind"], whole["kind"]) == ("lstm", "bilstm")
    assert whole["passed"] and whole["whole_sequence"] and not cost["whole_sequence"]
    assert cost["passed"] and cost["keras_export_s"] > 0 and cost["seqexport_s"] > 0
    assert {"load", "trace", "golden", "save", "verify", "publish"} <= set(cost["phases_s"])
    assert {"reload and gradients", "batch independence", "higher order"} <= set(cost["verify_checks_s"])
    assert cost["verify_peak_rss_mb"] > 0
    assert "## Export cost" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench-export-cost.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_names_the_fastest_forward_variant_and_its_ratio_to_the_floor():
    from exporter.tools.benchmark import summary

    def row(kind, variant, us, ratio):
        return {"model": "gru", "batch": 32, "steps": 128, "kind": kind, "variant": variant, "us_per_step": us,
                "ratio_vs_keras": ratio, "ratio_vs_floor": us / 20.0, "ratio_vs_recurrent_products": us / 25.0}

    rows = [row("forward", "keras", 100.0, 1.0), row("forward", "exported", 60.0, 0.6),
            row("forward", "exported_stream", 55.0, 0.55), row("forward", "ort_stream", 40.0, 0.4),
            row("gradient", "keras_grad", 300.0, 1.0), row("gradient", "exported_grad", 10.0, 0.03)]
    header, rule, line = summary(rows)
    assert line == "| gru | 32 | 128 | 0.60 | 0.55 | 0.03 | ort_stream | 2.00 | 1.60 |", line
