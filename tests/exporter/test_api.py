"""The Python API a training script calls: `exporter.export(model, ...)`, `exporter.verify(path)`."""

from __future__ import annotations

import keras
import pytest

import exporter
from exporter.artifact.manifest import read_manifest

pytestmark = pytest.mark.slow


def test_export_an_in_memory_model_then_verify_it(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4, return_sequences=True),
                              keras.layers.Dense(2)], name="notebook_model")
    result = exporter.export(model, name="nb", base=tmp_path, options=exporter.ExportOptions(check_hvp=False))
    assert result.report.passed, result.report.failures
    assert result.path == tmp_path / "nb" / "1" and (result.path / "saved_model.pb").is_file()
    source = read_manifest(result.path).source
    assert source["kind"] == "in_memory" and "notebook_model" in source["ref"]
    assert {c.check for c in result.report.checks} >= {"source", "chunked"}  # checked against the model itself
    again = exporter.verify(result.path)
    assert again.passed and len(again.checks) == len(result.report.checks)


def test_api_raises_what_the_cli_turns_into_exit_codes(tmp_path):
    with pytest.raises(exporter.BadInput, match="not a SavedModel directory"):
        exporter.verify(tmp_path)
    with pytest.raises(exporter.UnsupportedModel, match="Bidirectional"):
        exporter.export(keras.Sequential([keras.Input((None, 3)), keras.layers.Bidirectional(keras.layers.LSTM(2))]),
                        name="b", base=tmp_path, options=exporter.ExportOptions(require_stream=True))
    with pytest.raises(exporter.BadInput, match="Expected a keras.Model"):
        exporter.export(object(), name="o", base=tmp_path)
