"""Every official-example model (tests/exporter/official_examples.py) through `exporter.export`: one JSON
line each, with how it exported (streams, streams its decoder from a context, whole-sequence, refused,
crashed), its checks and seconds. For an encoder-decoder, `--decoders` also decodes the reloaded export
step by step from `initial_state(context)` and compares outputs and weight gradients with the Keras
model's teacher-forced pass, then converts it to ONNX.

    .venv/bin/python scripts/survey_examples.py [--decoders] [name ...]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _names(examples) -> list[str]:
    builders = [name for name, f in vars(examples).items() if inspect.isfunction(f) and f.__module__ == examples.__name__
                and not name.startswith("_") and name != "build" and f.__code__.co_argcount == 0]
    return [*builders, "seq2seq_encoder", "seq2seq_decoder"]


def _step_by_step(model, export_dir: Path) -> dict:
    """Worst error of decoding 8 steps through the reloaded `initial_state` and `step` against the Keras
    model, outputs and gradients w.r.t. every weight (loss: random weights on the outputs)."""
    import numpy as np
    import tensorflow as tf

    from exporter.artifact.manifest import read_manifest

    manifest = read_manifest(export_dir)
    loaded = tf.saved_model.load(str(export_dir))
    (context,) = manifest.context_inputs
    rng = np.random.default_rng(3)
    steps = context.steps if context.steps > 0 else 12
    target_spec = next(t for t in model.inputs if t.name != context.name)
    if context.dtype.startswith("int"):
        source = rng.integers(1, context.vocab, size=(3, steps)).astype(np.int32)
        source[1, steps // 2:] = 0  # a padded sentence
        target = rng.integers(1, 20, size=(3, 8)).astype(np.int32)
    else:
        source = rng.normal(size=(3, steps, *context.shape)).astype(np.float32)
        target = rng.normal(size=(3, 8, *target_spec.shape[2:])).astype(np.float32)
    ordered = [source if t.name == context.name else target for t in model.inputs]
    weights = tf.constant(rng.normal(size=model(ordered).shape).astype(np.float32))
    names = [s.name for s in manifest.states]
    with tf.GradientTape() as tape:
        want = model(ordered)
        keras_loss = tf.reduce_sum(weights * want)
    want_grads = tape.gradient(keras_loss, model.trainable_variables)
    with tf.GradientTape() as tape:
        states = loaded.signatures["initial_state"](batch_size=tf.constant(3), **{context.name: tf.constant(source)})
        outputs = []
        for t in range(target.shape[1]):
            result = loaded.signatures["step"](x=tf.constant(target[:, t]), **{n: states[n] for n in names})
            outputs.append(result["y"])
            states = {n: result[n] for n in names}
        got = tf.stack(outputs, axis=1)
        export_loss = tf.reduce_sum(weights * got)
    got_grads = tape.gradient(export_loss, list(loaded.trainable_variables))
    dense = lambda g: tf.convert_to_tensor(g).numpy()  # noqa: E731  an embedding's gradient is sparse
    return {"step_outputs_max_abs": float(np.max(np.abs(got.numpy() - want.numpy()))),
            "step_weight_grads_max_abs": max(float(np.max(np.abs(dense(a) - dense(b))))
                                              for a, b in zip(got_grads, want_grads)),
            "states": [f"{s.name}{list(s.shape)}" for s in manifest.states]}


def _onnx(export_dir: Path, out: Path) -> dict:
    from exporter.convert.targets import convert_export

    report = convert_export(export_dir, "onnx", out)
    errors = [c.max_abs for c in report.checks if c.max_abs is not None]
    return {"onnx_passed": report.passed, "onnx_rows": len(report.checks), "onnx_max_abs": max(errors, default=None)}


# The longest sequence a causal-attention model of any length is exported to stream (`--max-length`).
MAX_LENGTH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="examples to try (default: every one)")
    parser.add_argument("--decoders", action="store_true", help="step-by-step and ONNX figures of encoder-decoders")
    args = parser.parse_args()

    import exporter
    from exporter.artifact.specs import ExportOptions
    from tests.exporter import official_examples as examples

    base = Path(tempfile.mkdtemp(prefix="survey-"))
    for name in args.names or _names(examples):
        started = time.monotonic()
        row: dict = {"model": name}
        try:
            model = examples.build(name)
            try:
                result = exporter.export(model, name=name, base=base, options=ExportOptions(check_hvp=False))
            except exporter.UnsupportedModel as exc:
                if "--max-length" not in str(exc):
                    raise
                # Causal attention over any length: what its refusal says to do, the longest stream chosen
                row["refused first"] = str(exc)
                result = exporter.export(model, name=name, base=base,
                                         options=ExportOptions(check_hvp=False, max_length=MAX_LENGTH))
                row["max_length"] = MAX_LENGTH
            manifest = result.manifest
            row |= {"outcome": ("whole-sequence" if manifest.whole_sequence else
                                "streams its decoder" if manifest.context_inputs else "streams"),
                    "checks": result.report.summary(), "why": manifest.whole_sequence}
            if args.decoders and manifest.context_inputs:
                row |= _step_by_step(model, result.path) | _onnx(result.path, base / f"{name}-onnx")
        except exporter.SeqExportError as exc:
            row |= {"outcome": "refused", "exit": exc.exit_code, "why": str(exc)}
        except Exception as exc:  # noqa: BLE001  the survey reports what a user would meet
            row |= {"outcome": "crashed", "why": f"{type(exc).__name__}: {exc}"}
        row["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
