"""LiteRT and ONNX Runtime: exports with several outputs or static inputs convert, and every output is
checked by name; static inputs are inputs of each converted model, their initial state converted too.

Tolerance of every parity row: the export's own (atol 1e-5, rtol 1e-4); the worst error is printed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporter.artifact.manifest import read_manifest
from exporter.convert.graph import load_export
from exporter.convert.parity import driver_checks
from exporter.convert.runtimes import LiteRTModel, OrtModel, StepLoopBackend
from exporter.convert.targets import convert_export
from tests.exporter.convert.common import describe

# (target, export, stream batch): each model once, both targets on a several-output and a static-input one.
CASES = (("onnx", "two_heads_on_gru", None), ("onnx", "dict_of_outputs", None), ("onnx", "static_initial_state", None),
         ("onnx", "static_features_per_step", None), ("tflite", "head_and_lstm_states", 2),
         ("tflite", "static_initial_state", None))


@pytest.fixture(scope="module")
def exports(several_output_exports, static_input_exports):
    return {name: export.path for name, export in {**several_output_exports, **static_input_exports}.items()}


@pytest.fixture(scope="module")
def loaded(exports):
    return {name: load_export(path) for name, path in exports.items() if name in {c[1] for c in CASES}}


@pytest.fixture(scope="module")
def reports(exports, loaded, tmp_path_factory):
    out = tmp_path_factory.mktemp("several-and-static")
    return {(target, name): convert_export(exports[name], target, out / target / name, loaded=loaded[name],
                                           stream_batch=batch)
            for target, name, batch in CASES}


@pytest.mark.parametrize("target,name", [(t, n) for t, n, _ in CASES])
def test_every_output_is_checked_by_name(reports, loaded, target, name):
    report = reports[(target, name)]
    print(describe(report))
    assert report.passed, report.failures
    manifest = loaded[name].manifest
    files = {f.path for f in report.files}
    assert ({f"initial_state.{target}"} <= files) == bool(manifest.static_inputs), files
    keys = {key for key, _, _ in manifest.output_keys()} | {s.name for s in manifest.states}
    drivers = {c.signature for c in report.checks if " x" in c.signature}
    assert drivers, report.checks
    for driver in drivers:
        assert {c.tensor for c in report.checks if c.signature == driver} == keys, driver
    if manifest.outputs:
        assert {c.tensor for c in report.checks if c.signature == "step"} >= {o.name for o in manifest.outputs}


def test_a_session_on_converted_models_equals_the_savedmodel(reports, exports):
    """A session over ONNX Runtime (no TF in the loop), static inputs given once, on a new batch, equals
    the export's own `serving_default`; starting from zeros instead of `initial_state.onnx` does not."""
    import tensorflow as tf

    from serving.session import StreamingSession

    folder = Path(reports[("onnx", "static_initial_state")].out_dir)
    step, initial = OrtModel.load(folder / "step.onnx"), OrtModel.load(folder / "initial_state.onnx")
    assert step.static_names == ("context",) and step.output_names == ("y",)
    rng = np.random.default_rng(12)
    x = rng.normal(size=(3, 10, 3)).astype(np.float32)
    statics = {"context": rng.normal(size=(3, 3)).astype(np.float32)}
    want = tf.saved_model.load(str(exports["static_initial_state"])).signatures["serving_default"](
        inputs=tf.constant(x), context=tf.constant(statics["context"]))
    session = StreamingSession(StepLoopBackend(step, initial), batch_size=3, statics=statics)
    got = np.concatenate([session.feed(x[:, :4]), session.feed(x[:, 4:])], axis=1)
    error = float(np.max(np.abs(got - want["outputs"].numpy())))
    print(f"ONNX Runtime session vs serving_default: max abs {error:.3g}")
    assert error <= 1e-5
    (state,) = read_manifest(exports["static_initial_state"]).states  # its name follows Keras's layer numbering
    np.testing.assert_allclose(session.states[state.name], want[state.name].numpy(), atol=1e-5, rtol=1e-4)
    zeros = StreamingSession(StepLoopBackend(step), batch_size=3, statics=statics)
    assert float(np.max(np.abs(zeros.feed(x) - want["outputs"].numpy()))) > 1e-3


def test_a_driver_that_drops_the_initial_state_or_an_output_fails(reports, loaded):
    """The driver rows have teeth: zeros for the states that the static inputs set fail, and so does a
    several-output driver that loses one output."""
    folder = Path(reports[("tflite", "static_initial_state")].out_dir)
    manifest, golden = loaded["static_initial_state"].manifest, loaded["static_initial_state"].golden
    rows = driver_checks("tflite", "step driver", StepLoopBackend(LiteRTModel.load(folder / "step.tflite")),
                         manifest, golden, manifest.options.tolerance)
    assert rows and not any(r.passed for r in rows if r.tensor == "outputs")

    folder = Path(reports[("onnx", "two_heads_on_gru")].out_dir)
    backend = StepLoopBackend(OrtModel.load(folder / "step.onnx"))

    class LosesRight:
        def initial_state(self, batch_size):
            return backend.initial_state(batch_size)

        def stream(self, inputs, states, lengths=None):
            outputs, states = backend.stream(inputs, states, lengths)
            return {"left": outputs["left"]}, states

    manifest, golden = loaded["two_heads_on_gru"].manifest, loaded["two_heads_on_gru"].golden
    rows = driver_checks("onnx", "step driver", LosesRight(), manifest, golden, manifest.options.tolerance)
    assert {r.tensor for r in rows if not r.passed} == {"right"}
    assert all(r.passed for r in rows if r.tensor != "right")


@pytest.mark.slow
def test_export_targets_onnx_takes_several_outputs(tmp_path):
    """`export --targets onnx` of a several-output model publishes with its ONNX files, every output checked."""
    import json

    from typer.testing import CliRunner

    from exporter.artifact.paths import manifest_path
    from exporter.cli.app import app

    result = CliRunner().invoke(app, ["export", "tests.exporter.real_models:two_outputs", "--name", "m", "--base",
                                      str(tmp_path), "--targets", "onnx", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (conversion,) = data["conversions"]
    assert conversion["target"] == "onnx" and conversion["passed"], conversion
    states = {s["name"] for s in json.loads(manifest_path(tmp_path / "m" / "1").read_text())["states"]}
    checked = {c["tensor"] for c in conversion["checks"] if c["signature"] == "step driver x2"}
    assert checked == {"left", "right"} | states, checked
