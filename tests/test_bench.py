"""`scripts/bench.py --quick` runs once; every variant matches the Keras model and the JSON is whole.

Benchmarks are not timed tests: nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ROW_FIELDS = {"model", "batch", "steps", "kind", "variant", "us_per_step", "throughput_steps_per_s",
              "ratio_vs_keras", "matches_keras", "excess_over_tolerance"}


def test_quick_bench(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="200")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").read_text().startswith("| model |")
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    rows = results["timings"]
    assert {r["variant"] for r in rows} >= {"keras", "exported", "exported_xla", "tf_step_loop", "numpy_floor",
                                            "litert_step_loop", "ort_step_loop", "keras_grad", "exported_grad"}
    for row in rows:
        assert ROW_FIELDS <= set(row), row
        if row["variant"] != "numpy_floor":
            assert row["matches_keras"], row
    assert results["memory"] and all("peak_mb_over_baseline" in m for m in results["memory"])

    # The export-cost section: both tools timed, seqexport's phases and checks, the verifier's memory.
    (cost,) = results["export_cost"]
    assert cost["passed"] and cost["keras_export_s"] > 0 and cost["seqexport_s"] > 0
    assert {"load", "trace", "golden", "save", "verify", "publish"} <= set(cost["phases_s"])
    assert {"reload and gradients", "batch independence", "higher order"} <= set(cost["verify_checks_s"])
    assert cost["verify_peak_rss_mb"] > 0
    assert "## Export cost" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench-export-cost.png").read_bytes()[:4] == b"\x89PNG"
