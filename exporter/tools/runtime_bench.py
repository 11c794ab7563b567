"""Time the runtime drivers next to TF's own `step` signature, interleaved, medians.

Three measurements for an export (`scripts/bench_runtimes.py` prints them):

- `conversion_costs`: seconds and file size of each converted model;
- `step_latency`: microseconds per step of a Python loop over the step model at
  each batch size, for the TF SavedModel `step` signature, the LiteRT driver and
  the ONNX Runtime driver (`InferenceSession.run`, and `run_with_ort_values` to
  show why the driver does not use it), as ratios to TF measured in one run;
- `sequence_scaling`: microseconds per step of a whole-sequence model against the
  step loop as T grows (LiteRT's `WHILE` was measured O(T^2)).

Every variant of a row runs in each repeat, in a rotated order, after one
warm-up; the row keeps the median. The machine's other load moves single ratios
by +-15% (docs/perf_baselines.md); compare ratios from one run only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.convert import onnx, tflite
from exporter.convert.graph import load_export
from exporter.convert.runtimes import LiteRTModel, OrtModel, SequenceBackend, StepLoopBackend, state_output_name
from exporter.convert.targets import convert_export
from exporter.tools.timing import interleaved_medians

TF_STEP = "TF step signature"
LITERT_STEP = "LiteRT step driver"
ORT_STEP = "ORT step driver (run)"
ORT_STEP_ORTVALUES = "ORT step loop (run_with_ort_values)"


def _tf_step_loop(signature, state_names, inputs):
    import tensorflow as tf

    def run():
        batch = inputs.shape[0]
        states = {n: tf.zeros([batch, *signature.structured_input_signature[1][n].shape[1:]]) for n in state_names}
        for t in range(inputs.shape[1]):
            result = signature(x=tf.constant(inputs[:, t]), **states)
            result["y"].numpy()
            states = {n: result[n] for n in state_names}

    return run


def _driver_loop(backend, inputs):
    def run():
        backend.stream(inputs, backend.initial_state(inputs.shape[0]))

    return run


def _ort_values_loop(model, inputs):
    """The same loop through `run_with_ort_values`, states kept as OrtValues."""
    import onnxruntime as ort

    session = model.session
    names = [o.name for o in session.get_outputs()]
    states = model.state_names

    def run():
        values = {n: ort.OrtValue.ortvalue_from_numpy(v) for n, v in model.zero_states(inputs.shape[0]).items()}
        for t in range(inputs.shape[1]):
            feed = {"x": ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(inputs[:, t])), **values}
            out = dict(zip(names, session.run_with_ort_values(names, feed)))
            out["y"].numpy()
            values = {n: out[state_output_name(n)] for n in states}

    return run


def _inputs(loaded, batch: int, steps: int, seed: int = 0) -> np.ndarray:
    spec = loaded.signature("step").structured_input_signature[1]["x"]
    rng = np.random.default_rng(seed)
    shape = (batch, steps, *spec.shape[1:])
    if spec.dtype.is_integer:
        return rng.integers(0, 2, size=shape).astype(spec.dtype.as_numpy_dtype)
    return rng.normal(size=shape).astype(spec.dtype.as_numpy_dtype)


def conversion_costs(export_dir: Path, out_dir: Path, *, stream_batch: int = 32) -> list[dict]:
    """Converts to `tflite` (with a whole-sequence model at `stream_batch`), `onnx` and `triton`.

    Returns:
        One row per file: target, file, signature, batch, KiB, seconds, and whether
        that target's parity checks passed.
    """
    loaded = load_export(Path(export_dir))
    rows = []
    for target, extra in (("tflite", {"stream_batch": stream_batch}), ("onnx", {}), ("triton", {})):
        report = convert_export(export_dir, target, Path(out_dir) / target, loaded=loaded, **extra)
        for file in report.files:
            rows.append({"target": target, "file": file.path, "signature": file.signature, "batch": file.batch,
                         "kib": round(file.size / 1024, 1), "seconds": round(file.seconds, 3),
                         "parity_passed": report.passed})
    return rows


def step_latency(
    export_dir: Path, *, batch_sizes: tuple[int, ...] = (1, 32), steps: int = 64, repeats: int = 7
) -> list[dict]:
    """Microseconds per step of each step driver, and its ratio to TF's `step` signature.

    Args:
        export_dir: an export version folder.
        batch_sizes: one row per batch size.
        steps: time steps per timed call (the loop a streaming client runs).
        repeats: timed repeats per variant (median kept).

    Returns:
        Rows `{"batch", "variant", "us_per_step", "ratio_vs_tf"}`.
    """
    loaded = load_export(Path(export_dir))
    step = loaded.signature("step")
    state_names = [s.name for s in loaded.manifest.states]
    litert = StepLoopBackend(LiteRTModel(tflite.convert_signature(loaded, "step")))
    ort_model = OrtModel(onnx.convert_signature(loaded, "step"))
    ort_backend = StepLoopBackend(ort_model)
    rows = []
    for batch in batch_sizes:
        inputs = _inputs(loaded, batch, steps)
        variants = {
            TF_STEP: _tf_step_loop(step, state_names, inputs),
            LITERT_STEP: _driver_loop(litert, inputs),
            ORT_STEP: _driver_loop(ort_backend, inputs),
            ORT_STEP_ORTVALUES: _ort_values_loop(ort_model, inputs),
        }
        medians = interleaved_medians(variants, repeats=repeats)
        for name, seconds in medians.items():
            rows.append({"batch": batch, "variant": name, "us_per_step": seconds / steps * 1e6,
                         "ratio_vs_tf": seconds / medians[TF_STEP]})
    return rows


def sequence_scaling(
    export_dir: Path, *, batch: int = 32, lengths: tuple[int, ...] = (64, 256, 1024), repeats: int = 3
) -> list[dict]:
    """Microseconds per step of whole-sequence models vs step loops as T grows.

    LiteRT's whole-sequence model is converted at the static `batch` it needs.

    Returns:
        Rows `{"steps", "variant", "us_per_step"}`.
    """
    loaded = load_export(Path(export_dir))
    backends = {
        "LiteRT whole sequence (WHILE)": SequenceBackend(LiteRTModel(tflite.convert_signature(loaded, "stream", batch=batch))),
        "LiteRT step loop": StepLoopBackend(LiteRTModel(tflite.convert_signature(loaded, "step"))),
        "ORT whole sequence (Loop)": SequenceBackend(OrtModel(onnx.convert_signature(loaded, "stream"))),
        "ORT step loop": StepLoopBackend(OrtModel(onnx.convert_signature(loaded, "step"))),
    }
    rows = []
    for steps in lengths:
        inputs = _inputs(loaded, batch, steps)
        medians = interleaved_medians({n: _driver_loop(b, inputs) for n, b in backends.items()}, repeats=repeats)
        rows.extend({"steps": steps, "variant": n, "us_per_step": s / steps * 1e6} for n, s in medians.items())
    return rows
