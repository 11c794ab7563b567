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
    assert (tmp_path / "bench.md").read_text().startswith("| model |")
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    rows = results["timings"]
    assert {r["variant"] for r in rows} >= {"keras", "exported", "exported_stream", "exported_xla", "tf_step_loop",
                                            "numpy_step_loop", "litert_step_loop", "ort_step_loop", "keras_grad",
                                            "exported_grad"}
    assert {r["model"] for r in rows} == {"lstm", "gru", "srnn"}
    for row in rows:
        assert ROW_FIELDS <= set(row), row
        assert row["matches_keras"], row  # the numpy step loop computes the model too
        assert row["floor_us_per_step"] > 0 and row["ratio_vs_floor"] > 0, row
    # The numpy loop's child says which BLAS it ran, with one thread.
    blas = results["machine"]["numpy_blas"]
    assert blas and all(b["num_threads"] == 1 for b in blas), blas
    assert all(g > 0 for g in results["machine"]["gemm_gflops"])
    assert results["memory"] and all("peak_mb_over_baseline" in m for m in results["memory"])

    # The export-cost section: both tools timed, seqexport's phases and checks, the verifier's memory.
    (cost,) = results["export_cost"]
    assert cost["passed"] and cost["keras_export_s"] > 0 and cost["seqexport_s"] > 0
    assert {"load", "trace", "golden", "save", "verify", "publish"} <= set(cost["phases_s"])
    assert {"reload and gradients", "batch independence", "higher order"} <= set(cost["verify_checks_s"])
    assert cost["verify_peak_rss_mb"] > 0
    assert "## Export cost" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench-export-cost.png").read_bytes()[:4] == b"\x89PNG"
