"""MODEL as a SavedModel directory: an export's `step` signature is re-exported and verified."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

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


def test_reexport_of_several_outputs_is_refused_naming_them(several_output_exports, tmp_path):
    path = several_output_exports["head_and_lstm_states"].path
    result = CliRunner().invoke(app, ["export", str(path), "--name", "m", "--base", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert ("supports exports with one output; this one has 3 (head, lstm_final_h, lstm_final_c)"
            in json.loads(result.stdout)["error"])
