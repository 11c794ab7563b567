"""Causal attention streams on a key/value cache (exporter/causal.py), verified in a fresh process.

The models are built as keras.io's miniature GPT builds its own (tests/exporter/official_examples.py):
its `TransformerBlock` with the mask `causal_attention_mask` makes, learned and sinusoidal positions, a
pre-norm block, an LSTM under causal self-attention; a cache shifted by one position is caught.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from exporter import causal
from exporter.artifact.errors import UnsupportedModel
from exporter.artifact.manifest import read_manifest
from exporter.artifact.specs import ExportOptions
from exporter.keras_model import step_model_from_keras
from exporter.pipeline import write_export
from exporter.verification.run import verify_many_in_fresh_process
from tests.exporter import official_examples as examples
from tests.fixtures import export_then_verify_together

pytestmark = pytest.mark.slow

MODELS = ("miniature_gpt", "gpt_two_blocks", "prenorm_gpt", "lstm_causal_attention", "lstm_causal_attention_float16")
MAX_LENGTHS = {"prenorm_gpt": 1024, "lstm_causal_attention": 24, "lstm_causal_attention_float16": 24}
WITH_HVP = {"lstm_causal_attention"}  # float inputs: second derivatives through the chained cache


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_then_verify_together(tmp_path_factory.mktemp("causal"), MODELS,
                                       lambda name: ExportOptions(check_hvp=name in WITH_HVP),
                                       builders=examples.build, max_lengths=MAX_LENGTHS)


@pytest.mark.parametrize("name", MODELS)
def test_causal_attention_streams_on_its_key_value_cache(exported, name):
    report = exported[name].report
    print(f"{name}: {report.summary()}, export {exported[name].export_seconds:.1f} s")
    assert report.passed, report.failures
    manifest = read_manifest(exported[name].path)
    assert manifest.streams and manifest.max_length == MAX_LENGTHS.get(name, 16)
    caches = [s for s in manifest.states if s.name.endswith(("_key", "_value"))]
    assert caches and all(s.shape[0] == manifest.max_length for s in caches)
    assert manifest.states[-1].name == causal.POSITION_STATE
    print(f"{name}: cache {manifest.cache_bytes():,} bytes per sequence at max_length {manifest.max_length}")
    checks = {c.check for c in report.checks if c.passed}
    assert {"chunked", "chunked gradients", "source", "source gradients", "batch independence"} <= checks
    assert any(c.check == "chunked" and c.signature.startswith("step x") for c in report.checks)
    if name in WITH_HVP:  # second derivatives through the chained cache
        assert "higher order" in checks


@pytest.mark.parametrize("name, chunks", [("gpt_two_blocks", (1,) * 16), ("gpt_two_blocks", (3, 3, 3, 3, 3, 1)),
                                          ("prenorm_gpt", (5, 1, 17, 2)), ("lstm_causal_attention", (1, 3, 7, 2))])
def test_streamed_chunks_equal_the_keras_model_on_new_data(exported, name, chunks):
    """Chunks of 1, 3 and uneven sizes through the reloaded `stream`, against Keras's whole call."""
    model = examples.build(name)
    loaded = tf.saved_model.load(str(exported[name].path))
    steps = sum(chunks)
    rng = np.random.default_rng(7)
    x = (rng.integers(1, 40, size=(3, steps)).astype("int32") if "gpt" in name
         else rng.normal(size=(3, steps, 6)).astype("float32"))
    want = model(x)
    want = np.asarray(want[0] if isinstance(want, list) else want)
    manifest = read_manifest(exported[name].path)
    key = manifest.outputs[0].name if manifest.outputs else "outputs"  # the GPT's: [logits, last block's output]
    states = loaded.signatures["initial_state"](batch_size=tf.constant(3))
    pieces, start = [], 0
    for size in chunks:
        result = loaded.signatures["stream"](inputs=tf.constant(x[:, start:start + size]), **states)
        pieces.append(result[key].numpy())
        states = {k: result[k] for k in states}
        start += size
    worst = float(np.max(np.abs(np.concatenate(pieces, axis=1) - want)))
    print(f"{name} in chunks {chunks}: max abs vs Keras {worst:.2e} (tolerance 1e-5)")
    assert worst <= 1e-5
    assert np.array_equal(states[causal.POSITION_STATE].numpy(), np.full(3, steps, np.float32))


def test_streaming_past_max_length_fails_in_the_graph_naming_it(exported):
    loaded = tf.saved_model.load(str(exported["lstm_causal_attention"].path))
    states = loaded.signatures["initial_state"](batch_size=tf.constant(1))
    result = loaded.signatures["stream"](inputs=tf.zeros([1, 24, 6]), **states)  # exactly max_length: fine
    states = {k: result[k] for k in states}
    with pytest.raises(tf.errors.InvalidArgumentError, match="stream past max_length=24"):
        loaded.signatures["step"](x=tf.zeros([1, 6]), **states)


def test_a_model_of_any_length_needs_max_length_naming_the_attention():
    with pytest.raises(UnsupportedModel, match=r"MultiHeadAttention\) attends causally.*--max-length"):
        step_model_from_keras(examples.build("prenorm_gpt"))


def test_checks_fail_when_the_cache_is_shifted_by_one_position(tmp_path, monkeypatch):
    """A realistic bug: each step's key and value written one row late, and attended one row further."""
    step_model = step_model_from_keras(examples.build("lstm_causal_attention"), max_length=24)
    with monkeypatch.context() as patched:
        patched.setattr(causal, "cache_rows", lambda position, steps: position[:, None] + tf.range(steps)[None, :] + 1)
        write_export(step_model, tmp_path / "shifted", name="s", source={"kind": "test"},
                     options=ExportOptions(check_hvp=False))
    (report,) = verify_many_in_fresh_process([tmp_path / "shifted"])
    failing = {c.check for c in report.checks if not c.passed and not c.not_applicable}
    print(report.summary(), sorted(failing))
    assert {"source", "source gradients"} <= failing


def test_inspect_reports_the_cache_bytes_per_sequence(exported):
    from typer.testing import CliRunner

    from exporter.cli.app import app

    result = CliRunner().invoke(app, ["inspect", str(exported["prenorm_gpt"].path)])
    assert result.exit_code == 0, result.output
    # 1024 positions x 4 heads x 4 dims x float32, a key and a value: 131,072 bytes.
    assert "max_length 1024: 131,072 bytes per sequence" in " ".join(result.output.split())


@pytest.mark.parametrize("name", ["gpt_two_blocks", "lstm_causal_attention"])
@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_runtimes_take_the_cache_as_named_inputs_and_outputs(exported, tmp_path, name, target):
    """The step model (and ONNX's stream model) converted with the caches and the position as named states;
    parity rows against the goldens, the step driver chaining them from zeros."""
    from exporter.convert.targets import convert_export

    report = convert_export(exported[name].path, target, tmp_path / target)
    print(report.summary())
    assert report.passed, report.failures
    assert any(c.signature.startswith("step driver") for c in report.checks)


def test_a_session_says_what_its_cache_costs_and_notes_a_large_one(exported):
    """131,072 cache bytes per sequence (+ 4 for the position): 7 sequences stay under 1 MiB, 8 pass it."""
    import warnings

    from serving.client import SavedModelBackend
    from serving.session import StreamingSession

    backend = SavedModelBackend(exported["prenorm_gpt"].path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note under the limit
        small = StreamingSession(backend, batch_size=7)
    assert small.state_bytes == 7 * (131_072 + 4) and "917,532 bytes" in repr(small)
    with pytest.warns(UserWarning, match="keep the state server-side"):
        StreamingSession(backend, batch_size=8)


def test_the_probes_findings_are_said_layer_by_layer():
    findings = step_model_from_keras(examples.build("gpt_two_blocks")).findings
    print(*findings, sep="\n")
    assert len(findings) == 3
    assert "(TokenAndPositionEmbedding): out[t] depends on in[t] and on t alone" in findings[0]
    assert all("(TransformerBlock): causal attention, stepped on a key/value cache of 16 positions" in f
               for f in findings[1:])


def test_the_cli_refuses_a_model_of_any_length_without_max_length_exit_2(tmp_path):
    from typer.testing import CliRunner

    from exporter.cli.app import app

    examples.build("prenorm_gpt").save(tmp_path / "gpt.keras")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "gpt.keras"), "--name", "gpt", "--base",
                                      str(tmp_path / "models"), "--import", "tests.exporter.official_examples"])
    assert result.exit_code == 2, result.output
    assert "attends causally" in result.output and "--max-length" in result.output
    assert not (tmp_path / "models" / "gpt").exists() or not any((tmp_path / "models" / "gpt").iterdir())


def test_triton_python_backend_keeps_the_cache_per_sequence_on_the_real_server(exported, tmp_path):
    """`convert --to triton --backend python`, then `check triton` on the real server: each sequence's caches and
    position kept by correlation id, streamed in 1, 2 and T chunks over gRPC and HTTP, equal the goldens."""
    import json

    from typer.testing import CliRunner

    from exporter.cli.app import app
    from exporter.convert.targets import convert_export

    report = convert_export(exported["gpt_two_blocks"].path, "triton-python", tmp_path / "repo")
    assert report.passed, report.failures
    result = CliRunner().invoke(app, ["check", "triton", str(tmp_path / "repo"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = [r for r in data["checks"] if r["max_abs"] is not None]
    print(f"{len(rows)} rows, worst {max(r['max_abs'] for r in rows):.1e}")
    tensors = {r["tensor"] for r in rows}
    assert causal.POSITION_STATE in tensors and any(t.endswith("_key") for t in tensors)
