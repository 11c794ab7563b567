"""`--jit`: forward signatures compiled with XLA, gradients through their twins without XLA."""

from __future__ import annotations

import pytest
from tensorflow.core.protobuf import saved_model_pb2

from exporter.artifact.specs import ExportOptions
from exporter.pipeline import export
from tests.exporter import models

pytestmark = pytest.mark.slow


def _xla_functions(export_dir) -> set[str]:
    saved = saved_model_pb2.SavedModel.FromString((export_dir / "saved_model.pb").read_bytes())
    library = saved.meta_graphs[0].graph_def.library
    return {f.signature.name for f in library.function if f.attr["_XlaMustCompile"].b}


def test_jit_export_verifies_with_xla_rows(tmp_path):
    path = tmp_path / "m.keras"
    models.build("stacked_functional").save(path)
    result = export(str(path), name="m", base=tmp_path / "base", options=ExportOptions(jit=True))
    report = result.report
    assert report.passed, report.failures
    xla_rows = [c for c in report.checks if c.check == "xla"]
    assert {c.signature for c in xla_rows} == {"serving_default", "stream", "step"}
    print("xla vs no-xla max abs", max(c.max_abs for c in xla_rows))
    assert _xla_functions(result.path), "no function is marked for XLA compilation"
    assert result.manifest.options.jit is True
