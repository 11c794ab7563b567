"""LiteRT and ONNX Runtime: exports with several sequence inputs convert, each other sequence input an input
of every converted model (one step of it in `step`, the chunk in `stream`), every output checked by name.

Tolerance of every parity row: the export's own (atol 1e-5, rtol 1e-4); the worst error is printed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporter.convert.graph import load_export
from exporter.convert.runtimes import OrtModel, SequenceBackend, StepLoopBackend
from exporter.convert.targets import convert_export
from tests.exporter.convert.common import describe

# (target, export, stream batch): each model on each target once; the tflite one with its stream model too.
CASES = (("onnx", "two_streams_into_lstm", None), ("onnx", "tokens_features_and_static_into_gru", None),
         ("tflite", "two_streams_into_lstm", 2), ("tflite", "tokens_features_and_static_into_gru", None))


@pytest.fixture(scope="module")
def reports(sequence_input_exports, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequence-inputs-converted")
    loaded = {name: load_export(export.path) for name, export in sequence_input_exports.items()}
    return {(target, name): (convert_export(sequence_input_exports[name].path, target, out / target / name,
                                            loaded=loaded[name], stream_batch=batch), loaded[name].manifest)
            for target, name, batch in CASES}


@pytest.mark.parametrize("target,name,batch", CASES)
def test_sequence_inputs_convert_and_every_output_is_checked(reports, target, name, batch):
    report, manifest = reports[(target, name)]
    print(describe(report))
    assert report.passed, report.failures
    keys = {key for key, _, _ in manifest.output_keys()} | {s.name for s in manifest.states}
    drivers = {c.signature for c in report.checks if " x" in c.signature}
    kinds = {d.rsplit(" x", 1)[0] for d in drivers}
    assert kinds == ({"step driver", "stream model"} if target == "onnx" or batch else {"step driver"}), drivers
    for driver in drivers:
        assert {c.tensor for c in report.checks if c.signature == driver} == keys, driver


def test_converted_sessions_feed_each_sequence_input(reports, sequence_input_exports):
    """Sessions over ONNX Runtime (step loop and stream model, no TF in the loop) on a new batch equal the
    export's own `serving_default`; the other input reversed in time does not; a missing one is refused."""
    import tensorflow as tf

    from serving.session import StreamingSession

    report, _ = reports[("onnx", "two_streams_into_lstm")]
    folder = Path(report.out_dir)
    step, stream = OrtModel.load(folder / "step.onnx"), OrtModel.load(folder / "stream.onnx")
    assert "b" in step.inputs and "b" in stream.inputs
    rng = np.random.default_rng(13)
    a = rng.normal(size=(3, 10, 4)).astype(np.float32)
    b = rng.normal(size=(3, 10, 3)).astype(np.float32)
    want = tf.saved_model.load(str(sequence_input_exports["two_streams_into_lstm"].path)).signatures[
        "serving_default"](inputs=tf.constant(a), b=tf.constant(b))["outputs"].numpy()
    for label, backend in (("step loop", StepLoopBackend(step, sequences=["b"])),
                           ("stream model", SequenceBackend(stream, sequences=["b"]))):
        for other, close in ((b, True), (b[:, ::-1], False)):
            session = StreamingSession(backend, batch_size=3)
            got = np.concatenate([session.feed(a[:, :4], sequences={"b": other[:, :4]}),
                                  session.feed(a[:, 4:], sequences={"b": other[:, 4:]})], axis=1)
            error = float(np.max(np.abs(got - want)))
            print(f"ONNX Runtime {label} session ({'b' if close else 'b reversed'}) vs serving_default: "
                  f"max abs {error:.3g}")
            assert (error <= 1e-5) == close
        with pytest.raises(ValueError, match=r"takes the sequence input\(s\) \['b'\] beside `inputs`"):
            StreamingSession(backend, batch_size=3).feed(a[:, :4])


@pytest.mark.slow
def test_export_targets_onnx_takes_several_sequence_inputs(tmp_path):
    """`export --targets onnx` of a two-sequence-input model publishes with its ONNX files, every output checked."""
    import json

    from typer.testing import CliRunner

    from exporter.artifact.paths import manifest_path
    from exporter.cli.app import app

    result = CliRunner().invoke(app, ["export", "tests.exporter.real_models:two_sequence_inputs", "--name", "m",
                                      "--base", str(tmp_path), "--targets", "onnx", "--json"])
    assert result.exit_code == 0, result.output
    (conversion,) = json.loads(result.stdout)["conversions"]
    assert conversion["target"] == "onnx" and conversion["passed"], conversion
    states = {s["name"] for s in json.loads(manifest_path(tmp_path / "m" / "1").read_text())["states"]}
    checked = {c["tensor"] for c in conversion["checks"] if c["signature"] == "step driver x2"}
    assert checked == {"outputs"} | states, checked
