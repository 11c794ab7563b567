"""ONNX Runtime: every RNN kind and the demo convert (step and whole-sequence `Loop`) and match the goldens.

Tolerance of every parity row: the export's own (atol 1e-5, rtol 1e-4); the
measured worst error is printed per export.
"""

from __future__ import annotations

import numpy as np
import pytest

from exporter.convert import onnx as onnx_convert
from exporter.convert.runtimes import OrtModel, StepLoopBackend, state_output_name
from exporter.convert.targets import convert_export
from tests.exporter.convert.common import KINDS, describe


@pytest.fixture(scope="module")
def kind_reports(kind_exports, kind_loaded, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return {k: convert_export(kind_exports[k], "onnx", out / k, loaded=kind_loaded[k]) for k in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_step_driver_and_sequence_model_match_golden(kind_reports, kind):
    report = kind_reports[kind]
    print(describe(report))
    assert report.passed, report.failures
    assert [f.path for f in report.files] == ["step.onnx", "stream.onnx"]
    signatures = {c.signature for c in report.checks}
    assert {"step", "step driver x2", "stream", "stream model x2"} <= signatures


def test_masked_sequence_model_reproduces_padded_outputs(kind_reports):
    """The `Loop` model runs the export's own masking, so its rows compare every output;
    the step driver's rows compare the valid steps only."""
    checks = kind_reports["masking"].checks
    assert {c.tensor for c in checks if c.signature == "stream model x2"} >= {"outputs"}
    assert {c.tensor for c in checks if c.signature == "step driver x2"} >= {"outputs[t<lengths]"}


def test_states_come_out_as_next_outputs(kind_reports, kind_loaded):
    from pathlib import Path

    model = OrtModel.load(Path(kind_reports["stacked_functional"].out_dir) / "step.onnx")
    states = {s.name for s in kind_loaded["stacked_functional"].manifest.states}
    assert len(states) == 3 and set(model.state_names) == states
    assert {o.name for o in model.session.get_outputs()} == {"y", *map(state_output_name, states)}
    assert set(model.outputs) == {"y", *states}  # mapped back to the export's keys


def test_demo_converts_for_inference_despite_its_custom_gradient(demo_export, demo_loaded, tmp_path):
    report = convert_export(demo_export.path, "onnx", tmp_path, loaded=demo_loaded)
    print(describe(report))
    assert report.passed, report.failures
    assert any("tf.custom_gradient" in n for n in report.notes), report.notes


def test_driver_handles_any_batch_size(kind_loaded):
    loaded = kind_loaded["lstm"]
    backend = StepLoopBackend(OrtModel(onnx_convert.convert_signature(loaded, "step")))
    for batch in (1, 4, 2):
        inputs = np.random.default_rng(batch).normal(size=(batch, 3, 3)).astype(np.float32)
        outputs, states = backend.stream(inputs, backend.initial_state(batch))
        assert outputs.shape == (batch, 3, 4)
        assert all(v.shape == (batch, 4) for v in states.values()) and len(states) == 2
