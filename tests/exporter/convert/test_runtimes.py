"""exporter.convert.runtimes: LiteRT and ONNX Runtime drivers behind the `Backend` protocol of `StreamingSession`.

Tolerance of every comparison: the export's own (atol 1e-5, rtol 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest

from exporter.artifact.compare import compare
from exporter.convert.runtimes import LiteRTModel, OrtModel, SequenceBackend, StepLoopBackend, load_model
from serving.session import Backend, StreamingSession
from tests import REPO_ROOT


@pytest.fixture(scope="module")
def demo_models(demo_loaded):
    from exporter.convert import onnx, tflite

    return {
        "litert": LiteRTModel(tflite.convert_signature(demo_loaded, "step")),
        "ort": OrtModel(onnx.convert_signature(demo_loaded, "step")),
    }


def _golden_predict(loaded):
    golden = loaded.golden
    want = {k[len("serving_default/out/"):]: v for k, v in golden.items() if k.startswith("serving_default/out/")}
    return golden["serving_default/in/inputs"], want


def test_drivers_are_backends(demo_models):
    for model in demo_models.values():
        assert isinstance(StepLoopBackend(model), Backend)


@pytest.mark.parametrize("runtime", ["litert", "ort"])
def test_streaming_session_matches_golden_predict(demo_models, demo_loaded, runtime):
    inputs, want = _golden_predict(demo_loaded)
    tolerance = demo_loaded.manifest.options.tolerance
    session = StreamingSession(StepLoopBackend(demo_models[runtime]), batch_size=inputs.shape[0])
    outputs = np.concatenate([session.feed(inputs[:, :2]), session.feed(inputs[:, 2:5]), session.feed(inputs[:, 5:])], 1)
    rows = [compare(runtime, "session", "outputs", outputs, want["outputs"], tolerance)]
    rows += [compare(runtime, "session", n, session.states[n], want[n], tolerance) for n in session.states]
    print([(r.tensor, r.max_abs) for r in rows])
    assert all(r.passed for r in rows) and session.steps_seen == inputs.shape[1]


def test_session_saved_in_one_runtime_resumes_in_the_other(demo_models, demo_loaded):
    """Swap LiteRT for ONNX Runtime mid-sequence without changing the loop."""
    inputs, want = _golden_predict(demo_loaded)
    tolerance = demo_loaded.manifest.options.tolerance
    first = StreamingSession(StepLoopBackend(demo_models["litert"]), batch_size=inputs.shape[0])
    head = first.feed(inputs[:, :3])
    resumed = StreamingSession.restore(first.save(), StepLoopBackend(demo_models["ort"]))
    tail = resumed.feed(inputs[:, 3:])
    row = compare("litert+ort", "session", "outputs", np.concatenate([head, tail], 1), want["outputs"], tolerance)
    print(row.max_abs)
    assert row.passed
    # Resuming from a fresh state instead must not match: the carried state matters.
    fresh = StreamingSession(StepLoopBackend(demo_models["ort"]), batch_size=inputs.shape[0])
    broken = compare("ort", "session", "outputs", np.concatenate([head, fresh.feed(inputs[:, 3:])], 1),
                     want["outputs"], tolerance)
    assert not broken.passed


def test_masked_rows_keep_their_state_past_their_length(kind_loaded):
    from exporter.convert import tflite

    loaded = kind_loaded["masking"]
    backend = StepLoopBackend(LiteRTModel(tflite.convert_signature(loaded, "step")))
    inputs = loaded.golden["serving_default/in/inputs"]
    lengths = np.array([6, 2, 0], np.int32)
    outputs, states = backend.stream(inputs, backend.initial_state(3), lengths)
    at_two, _ = backend.stream(inputs[1:2, :2], backend.initial_state(1))
    _, states_two = backend.stream(inputs[1:2, :2], backend.initial_state(1))
    for name, value in states.items():
        np.testing.assert_array_equal(value[1], states_two[name][0])  # held exactly
        np.testing.assert_array_equal(value[2], 0.0)  # never started
    np.testing.assert_array_equal(outputs[1, 2:], 0.0)
    np.testing.assert_array_equal(outputs[1, :2], at_two[0])


def test_errors_name_what_is_missing_or_wrong(demo_models, kind_loaded):
    backend = StepLoopBackend(demo_models["litert"])
    states = backend.initial_state(2)
    states.pop("gru_h")
    with pytest.raises(ValueError, match=r"states \['gru_h'\] are missing"):
        backend.stream(np.zeros((2, 1, 4), np.float32), states)
    with pytest.raises(ValueError, match="a step model takes `x`"):
        from exporter.convert import onnx

        StepLoopBackend(OrtModel(onnx.convert_signature(kind_loaded["lstm"], "stream")))
    with pytest.raises(ValueError, match="a sequence model takes `inputs`"):
        SequenceBackend(demo_models["ort"])
    with pytest.raises(ValueError, match="expected a .tflite or .onnx file"):
        load_model("model.pb")


def test_drivers_run_without_tensorflow(kind_exports, tmp_path):
    """A phone or a C++-free service has LiteRT/ORT but no TF: the drivers must not import it."""
    import subprocess
    import sys

    from exporter.convert.targets import convert_export

    for target in ("tflite", "onnx"):
        assert convert_export(kind_exports["gru_reset_before"], target, tmp_path / target).passed
    script = (
        "import sys, numpy as np\n"
        "from exporter.convert.runtimes import StepLoopBackend, load_model\n"
        "from serving.session import StreamingSession\n"
        f"for path in ({str(tmp_path / 'tflite' / 'step.tflite')!r}, {str(tmp_path / 'onnx' / 'step.onnx')!r}):\n"
        "    session = StreamingSession(StepLoopBackend(load_model(path)), batch_size=2)\n"
        "    out = session.feed(np.ones((2, 5, 3), np.float32))\n"
        "    assert out.shape == (2, 5, 4) and np.isfinite(out).all()\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "print('ok')\n"
    )
    root = REPO_ROOT
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
