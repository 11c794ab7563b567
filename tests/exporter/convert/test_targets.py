"""exporter.convert.targets and the CLI: `convert` (read-only), `export --targets`, ops a runtime lacks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from exporter.artifact.paths import SEQEXPORT_DIR, manifest_path
from exporter.cli.app import app
from exporter.convert.targets import ConversionReport, convert_export
from tests.render import assert_fits, assert_whole

DIGAMMA = "tests.exporter.convert.factories:digamma_cell"


@pytest.fixture(scope="module")
def digamma_export(tmp_path_factory):
    from exporter.pipeline import write_export
    from tests.exporter.convert.factories import digamma_cell

    path = tmp_path_factory.mktemp("digamma") / "1"
    write_export(digamma_cell(), path, name="digamma", source={"kind": "test"})
    return path


def _text(result) -> str:
    """The CLI's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("target, op", [("tflite", "tf.Digamma"), ("onnx", "Digamma"), ("triton", "Digamma")])
def test_an_op_the_runtime_lacks_is_named(digamma_export, tmp_path, target, op):
    report = convert_export(digamma_export, target, tmp_path)
    print(report.summary())
    assert not report.passed and report.files == ()
    assert report.failures and all(op in c.message for c in report.failures)
    assert "step" in {c.signature for c in report.failures}
    assert json.loads((tmp_path / ("digamma" if target == "triton" else ".") / "parity.json").read_text())["passed"] is False


def test_convert_cli_leaves_the_export_untouched(demo_export, tmp_path):
    before = _snapshot(demo_export.path)
    result = CliRunner().invoke(app, ["convert", str(demo_export.path), "--to", "onnx", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "onnx parity vs golden.npz" in _text(result) and "all 32 parity checks passed" in _text(result)
    assert_fits(result.stdout, 80)  # the parity and files tables, whole at 80 columns
    assert_whole(result.stdout, "step.onnx", "stream.onnx", "step driver x2", "stream model x6")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["parity.json", "step.onnx", "stream.onnx"]
    report = ConversionReport.from_json(json.loads((tmp_path / "o" / "parity.json").read_text()))
    assert report.passed and report.to_json() == json.loads((tmp_path / "o" / "parity.json").read_text())
    assert _snapshot(demo_export.path) == before


def test_convert_cli_exits_1_when_a_conversion_fails(digamma_export, tmp_path):
    result = CliRunner().invoke(app, ["convert", str(digamma_export), "--to", "tflite", "--out", str(tmp_path),
                                      "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is False and "tf.Digamma" in data["checks"][0]["message"]


@pytest.mark.parametrize("args, message", [
    (["--to", "coreml"], "is not a target"),
    (["--to", "onnx", "--stream-batch", "4"], "for --to tflite only"),
    (["--to", "onnx", "--name", "x"], "for --to triton only"),
])
def test_convert_cli_bad_usage_exits_2(demo_export, tmp_path, args, message):
    result = CliRunner().invoke(app, ["convert", str(demo_export.path), *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and message in _text(result), result.output


def test_convert_cli_refuses_to_write_into_the_export(demo_export):
    out = demo_export.path / "assets.extra" / "mine"
    result = CliRunner().invoke(app, ["convert", str(demo_export.path), "--to", "onnx", "--out", str(out)])
    assert result.exit_code == 2 and "never writes into a published version" in _text(result)
    assert not out.exists()


def test_convert_cli_needs_a_seqexport_export(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "saved_model.pb").write_bytes(b"")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "export"), "--to", "onnx", "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code == 2 and "manifest.json" in _text(result), result.output


@pytest.mark.parametrize("targets, message", [("tflite,coreml", "coreml"), ("triton", "convert --to triton")])
def test_export_rejects_unknown_targets_before_exporting(demo_keras_file, tmp_path, targets, message):
    result = CliRunner().invoke(app, ["export", str(demo_keras_file), "--name", "m", "--base", str(tmp_path),
                                      "--targets", targets])
    assert result.exit_code == 2 and message in _text(result), result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_export_with_targets_stores_results_in_the_version(demo_keras_file, tmp_path):
    result = CliRunner().invoke(app, ["export", str(demo_keras_file), "--name", "demo", "--base", str(tmp_path),
                                      "--targets", "tflite,onnx", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and [c["target"] for c in data["conversions"]] == ["tflite", "onnx"]
    runtimes = tmp_path / "demo" / "1" / SEQEXPORT_DIR / "runtimes"
    assert sorted(p.relative_to(runtimes).as_posix() for p in runtimes.rglob("*") if p.is_file()) == [
        "onnx/parity.json", "onnx/step.onnx", "onnx/stream.onnx", "tflite/parity.json", "tflite/step.tflite"]
    parity = json.loads((runtimes / "tflite" / "parity.json").read_text())
    assert parity["export_dir"] == "." and parity["out_dir"] == "assets.extra/seqexport/runtimes/tflite"
    manifest = json.loads(manifest_path(tmp_path / "demo" / "1").read_text())
    checks = {c["check"] for c in manifest["checks"]}
    assert {"tflite", "onnx", "reload", "chunked"} <= checks and manifest["options"]["targets"] == ["tflite", "onnx"]


@pytest.mark.slow
def test_export_publishes_and_exits_1_when_a_target_fails(tmp_path):
    result = CliRunner().invoke(app, ["export", DIGAMMA, "--name", "dg", "--base", str(tmp_path),
                                      "--targets", "tflite,onnx"])
    print(result.output)
    assert result.exit_code == 1
    assert (tmp_path / "dg" / "1" / "saved_model.pb").is_file()  # the TF export is valid and published
    assert "tf.Digamma" in _text(result) and "Digamma" in _text(result)
    assert "published" in _text(result) and "a requested conversion failed" in _text(result)
    manifest = json.loads(manifest_path(tmp_path / "dg" / "1").read_text())
    failed = [c for c in manifest["checks"] if not c["passed"]]
    assert failed and {c["check"] for c in failed} == {"tflite", "onnx"}


def test_a_missing_optional_package_is_named(monkeypatch, demo_export, tmp_path):
    from exporter.artifact.errors import BadInput
    from exporter.artifact.specs import RuntimeTarget
    from exporter.convert import targets

    monkeypatch.setitem(targets.REQUIREMENTS, RuntimeTarget.ONNX, (("no_such_runtime_pkg", "no-such-runtime"),))
    with pytest.raises(BadInput, match=r"'onnx' needs no-such-runtime.*seqexport\[runtimes\]"):
        convert_export(demo_export.path, "onnx", tmp_path)
    assert not any(tmp_path.iterdir())
    targets.check_dependencies(["tflite", "triton"])  # installed here: no error
