"""LiteRT: every RNN kind and the demo convert, and the step driver matches the goldens.

Tolerance of every parity row: the export's own (atol 1e-5, rtol 1e-4); the
measured worst error is printed per export.
"""

from __future__ import annotations

import numpy as np
import pytest

from exporter.artifact.errors import ConversionFailed
from exporter.convert import tflite
from exporter.convert.parity import driver_checks, model_checks
from exporter.convert.runtimes import LiteRTModel, SequenceBackend
from exporter.convert.targets import convert_export
from tests.exporter.convert.common import KINDS, describe


@pytest.fixture(scope="module")
def kind_reports(kind_exports, kind_loaded, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    return {k: convert_export(kind_exports[k], "tflite", out / k, loaded=kind_loaded[k]) for k in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_step_driver_matches_golden(kind_reports, kind):
    report = kind_reports[kind]
    print(describe(report))
    assert report.passed, report.failures
    assert [f.path for f in report.files] == ["step.tflite"]
    assert {"step", "step driver x1", "step driver x2", "step driver x6"} <= {c.signature for c in report.checks}
    assert (kind_reports[kind].files[0].size > 0) and (report.files[0].batch is None)


def test_parity_file_is_written(kind_reports):
    import json
    from pathlib import Path

    report = kind_reports["lstm"]
    data = json.loads((Path(report.out_dir) / "parity.json").read_text())
    assert data["passed"] is True and data["target"] == "tflite"
    assert len(data["checks"]) == len(report.checks)
    assert any("static batch" in n for n in data["notes"])  # why there is no whole-sequence model


def test_demo_converts_for_inference_despite_its_custom_gradient(demo_export, demo_loaded, tmp_path):
    report = convert_export(demo_export.path, "tflite", tmp_path, loaded=demo_loaded, stream_batch=8)
    print(describe(report))
    assert report.passed, report.failures
    assert [f.path for f in report.files] == ["step.tflite", "stream_b8.tflite"]
    assert any("tf.custom_gradient" in n and "clip" in n for n in report.notes), report.notes
    assert any("TF-only" in n for n in report.notes)


def test_naive_keras_conversion_returns_garbage_that_parity_catches(tmp_path):
    """Pitfall 1: LiteRT does not freeze Keras 3 variables; the frozen path does."""
    import tensorflow as tf

    from exporter.convert.graph import load_export
    from exporter.keras_model import step_model_from_keras
    from exporter.pipeline import write_export
    from exporter.trace import trace
    from tests.exporter import models

    keras_model = models.build("lstm")
    step_model = step_model_from_keras(keras_model)
    write_export(step_model, tmp_path / "lstm", name="lstm", source={"kind": "test"})
    loaded = load_export(tmp_path / "lstm")
    tolerance = loaded.manifest.options.tolerance

    # What a user would write: the step traced with the cells reading their Keras variables
    # inside the function (seqexport's own `bind_step` reads them outside, which happens to
    # freeze even on this path), and the Keras model as the trackable.
    import dataclasses

    unbound = dataclasses.replace(step_model, bind_step=None, head=None, core_output_shape=None)
    naive = tf.lite.TFLiteConverter.from_concrete_functions(
        [trace(unbound).functions["step"]], keras_model
    ).convert()
    assert set(tflite.VARIABLE_OPS) & set(tflite.operator_names(naive))
    naive_rows = model_checks("tflite", "step", LiteRTModel(naive), loaded.golden, tolerance)
    print("naive:", [(r.tensor, r.max_abs) for r in naive_rows])
    assert naive_rows and not any(r.passed for r in naive_rows)
    with pytest.raises(ConversionFailed, match="READ_VARIABLE.*not frozen"):
        tflite.assert_frozen(naive, what="the naive model")

    frozen = tflite.convert_signature(loaded, "step")
    assert not set(tflite.VARIABLE_OPS) & set(tflite.operator_names(frozen))
    rows = model_checks("tflite", "step", LiteRTModel(frozen), loaded.golden, tolerance)
    print("frozen:", [(r.tensor, r.max_abs) for r in rows])
    assert rows and all(r.passed for r in rows)


def test_whole_sequence_needs_a_static_batch(kind_loaded):
    """Pitfall 2: a dynamic batch does not convert; a static one does, with T dynamic."""
    loaded = kind_loaded["masking"]
    with pytest.raises(ConversionFailed, match=r"tf\.TensorListReserve.*static batch"):
        tflite.convert_signature(loaded, "stream")
    batch = loaded.golden["stream/in/inputs"].shape[0]
    model = LiteRTModel(tflite.convert_signature(loaded, "stream", batch=batch))
    assert model.static_batch == batch and model.inputs["inputs"].shape[1] is None
    tolerance = loaded.manifest.options.tolerance
    # Chunks of 6, 3 and 1 steps: one model, three sequence lengths; padded steps compared too.
    rows = model_checks("tflite", "stream", model, loaded.golden, tolerance) + driver_checks(
        "tflite", "stream model", SequenceBackend(model), loaded.manifest, loaded.golden, tolerance,
        batch=batch, exact_padding=True)
    print([(r.signature, r.tensor, r.max_abs) for r in rows])
    assert rows and all(r.passed for r in rows)
    with pytest.raises(ValueError, match=f"converted for batch size {batch}"):
        backend = SequenceBackend(model)
        backend.stream(np.zeros((batch + 1, 2, 3), np.float32), backend.initial_state(batch + 1))


def test_static_batch_larger_than_the_goldens_repeats_their_rows(kind_loaded):
    loaded = kind_loaded["gru_reset_after"]
    model = LiteRTModel(tflite.convert_signature(loaded, "stream", batch=5))
    rows = model_checks("tflite", "stream", model, loaded.golden, loaded.manifest.options.tolerance)
    assert rows and all(r.passed for r in rows), rows
