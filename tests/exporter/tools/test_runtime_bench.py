"""exporter.tools.runtime_bench runs end to end on a small export (timings are printed, not asserted:
the machine is shared, so only the structure and the parity of what was timed are checked)."""

from __future__ import annotations

import pytest

from exporter.tools import runtime_bench as bench


def test_step_latency_rows(kind_exports):
    rows = bench.step_latency(kind_exports["lstm"], batch_sizes=(1, 3), steps=4, repeats=1)
    for row in rows:
        print(row)
    assert [(r["batch"], r["variant"]) for r in rows] == [
        (b, v) for b in (1, 3)
        for v in (bench.TF_STEP, bench.LITERT_STEP, bench.ORT_STEP, bench.ORT_STEP_ORTVALUES)]
    assert all(r["us_per_step"] > 0 for r in rows)
    assert all(r["ratio_vs_tf"] == pytest.approx(1.0) for r in rows if r["variant"] == bench.TF_STEP)


def test_sequence_scaling_and_conversion_costs(kind_exports, tmp_path):
    rows = bench.sequence_scaling(kind_exports["gru_reset_after"], batch=2, lengths=(4, 8), repeats=1)
    assert sorted({r["steps"] for r in rows}) == [4, 8] and len(rows) == 8
    costs = bench.conversion_costs(kind_exports["gru_reset_after"], tmp_path, stream_batch=2)
    print(costs)
    assert [(c["target"], c["file"]) for c in costs] == [
        ("tflite", "step.tflite"), ("tflite", "stream_b2.tflite"), ("onnx", "step.onnx"), ("onnx", "stream.onnx"),
        ("triton", "gru_reset_after/1/model.onnx")]
    assert all(c["parity_passed"] and c["kib"] > 0 and c["seconds"] > 0 for c in costs)
