"""MODEL as a SavedModel directory: an export's `step` signature is re-exported and verified."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from exporter.artifact.paths import manifest_path
from exporter.cli.app import app
from exporter.pipeline import export

pytestmark = pytest.mark.slow


def test_reexport_of_a_published_version(demo_export, tmp_path):
    result = export(str(demo_export.path), name="again", base=tmp_path)
    assert result.report.passed, result.report.failures
    assert [s.name for s in result.manifest.states] == [s.name for s in demo_export.manifest.states]
    assert result.manifest.source["kind"] == "saved_model"
    source_rows = [c for c in result.report.checks if c.check == "source"]
    assert source_rows and source_rows[0].max_abs <= 1e-5
    print("re-export source check max abs", source_rows[0].max_abs)


def test_saved_model_without_step_signature_is_refused(tmp_path):
    import tensorflow as tf

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def __call__(self, x):
            return {"y": x * 2.0}

    module = Plain()
    tf.saved_model.save(module, str(tmp_path / "plain"), signatures=module.__call__)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "plain"), "--name", "m", "--base", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "no 'step' signature" in " ".join(result.output.split())
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


@pytest.mark.parametrize("name", ["head_and_lstm_states", "static_initial_state"])
def test_reexport_keeps_several_outputs_and_static_inputs(several_output_exports, static_input_exports, tmp_path, name):
    """The step model is rebuilt with the manifest's outputs and static inputs (and the states those set),
    verified against the first export's `serving_default`, and answers as the first export does."""
    import numpy as np
    import tensorflow as tf

    first = {**several_output_exports, **static_input_exports}[name].path
    result = export(str(first), name="again", base=tmp_path)
    assert result.report.passed, result.report.failures
    before = json.loads(manifest_path(first).read_text())
    assert result.manifest.source["kind"] == "saved_model"
    assert [o.to_json() for o in result.manifest.outputs] == before.get("outputs", [])
    assert [i.to_json() for i in result.manifest.static_inputs] == before.get("static_inputs", [])
    assert result.manifest.outputs or result.manifest.static_inputs
    worst = max(c.max_abs for c in result.report.checks if c.check == "source")
    print(name, "re-export: worst source row max abs", worst, "checks", len(result.report.checks))

    rng = np.random.default_rng(11)
    feed = {"inputs": tf.constant(rng.normal(size=(2, 9, 3)).astype(np.float32))}
    feed.update({i.name: tf.constant(rng.normal(size=(2, *i.shape)).astype(np.float32))
                 for i in result.manifest.static_inputs})
    want = tf.saved_model.load(str(first)).signatures["serving_default"](**feed)
    got = tf.saved_model.load(str(result.path)).signatures["serving_default"](**feed)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["two_streams_into_lstm", "tokens_features_and_static_into_gru"])
def test_reexport_keeps_several_sequence_inputs(sequence_input_exports, tmp_path, name):
    """The step model is rebuilt with the manifest's sequence inputs (`step` takes one step of each), verified
    against the first export's `serving_default`, and answers as the first export does on new data."""
    import numpy as np
    import tensorflow as tf

    first = sequence_input_exports[name].path
    result = export(str(first), name="again", base=tmp_path)
    assert result.report.passed, result.report.failures
    before = json.loads(manifest_path(first).read_text())
    assert result.manifest.source["kind"] == "saved_model"
    assert [i.to_json() for i in result.manifest.sequence_inputs] == before["sequence_inputs"] != []
    assert [i.to_json() for i in result.manifest.static_inputs] == before.get("static_inputs", [])
    assert result.manifest.format_version == before["format_version"]
    worst = max(c.max_abs for c in result.report.checks if c.check == "source")
    print(name, "re-export: worst source row max abs", worst, "checks", len(result.report.checks))

    again = tf.saved_model.load(str(result.path))
    step_keys = set(again.signatures["step"].structured_input_signature[1])
    assert {i.name for i in result.manifest.sequence_inputs} <= step_keys
    rng = np.random.default_rng(12)
    batch, steps = 2, 9
    inputs = again.signatures["serving_default"].structured_input_signature[1]["inputs"]
    if inputs.dtype.is_integer:
        feed = {"inputs": rng.integers(0, 11, size=(batch, steps)).astype(inputs.dtype.as_numpy_dtype)}
    else:
        feed = {"inputs": rng.normal(size=(batch, steps, *inputs.shape[2:])).astype(np.float32)}
    feed.update({i.name: rng.normal(size=(batch, steps, *i.shape)).astype(i.dtype)
                 for i in result.manifest.sequence_inputs})
    feed.update({i.name: rng.normal(size=(batch, *i.shape)).astype(i.dtype) for i in result.manifest.static_inputs})
    feed = {k: tf.constant(v) for k, v in feed.items()}
    want = tf.saved_model.load(str(first)).signatures["serving_default"](**feed)
    got = again.signatures["serving_default"](**feed)
    assert sorted(got) == sorted(want)
    for key in want:
        error = float(np.max(np.abs(got[key].numpy() - want[key].numpy())))
        print(name, key, "re-export vs first export on new data (B=2, T=9): max abs", error)
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-6, atol=1e-6)
