"""The official examples' sequence models (tests/exporter/official_examples.py) export, verify, and
match Keras on new data (the encoder-decoders: tests/exporter/test_context.py; causal transformers:
tests/exporter/test_causal_attention.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from exporter.artifact.manifest import read_manifest
from exporter.artifact.specs import ExportOptions
from exporter.keras_model import step_model_from_keras
from tests.exporter import official_examples
from tests.fixtures import export_then_verify_together

pytestmark = pytest.mark.slow

EXPORTED = ("video_classifier", "weather_forecaster", "character_lstm", "padded_review_classifier",
            "seq2seq_encoder", "seq2seq_decoder", "forecast_lstm")
# Second derivatives for a fused LSTM and a graph: each fused one takes its graph ~20 s to build.
WITH_HVP = {"weather_forecaster", "video_classifier", "seq2seq_decoder"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_then_verify_together(tmp_path_factory.mktemp("official"), EXPORTED,
                                       lambda name: ExportOptions(check_hvp=name in WITH_HVP),
                                       builders=official_examples.build)


@pytest.mark.parametrize("name", EXPORTED)
def test_example_exports_and_verifies(exported, name):
    report = exported[name].report
    assert report.passed, report.failures
    print(f"{name}: {report.summary()}, export {exported[name].export_seconds:.1f} s")
    manifest = read_manifest(exported[name].path)
    inputs = {"inputs", *(i.name for i in (*manifest.static_inputs, *manifest.sequence_inputs))}
    checked = {c.tensor.split(" -> ")[0] for c in report.checks if c.check == "inputs"}  # `<input> -> <output>`
    assert checked == inputs  # every input was changed, and the export followed the source


def _new_data(model, rng, steps):
    """Random inputs for every model input, `steps` long where the length is free; masks with false steps."""
    values = []
    for tensor in model.inputs:
        shape = [4, *(steps if d is None else d for d in tensor.shape[1:])]
        if tensor.dtype == "bool":
            value = rng.random(shape) < 0.6
            value[:, 0] = True
        elif "int" in str(tensor.dtype):
            value = rng.integers(1, 10, size=shape).astype("int32")
        else:
            value = rng.normal(size=shape).astype("float32")
        values.append(value)
    return values


@pytest.mark.parametrize("name", EXPORTED)
def test_reloaded_export_matches_keras_on_new_data(exported, name):
    """Another draw, another length where the model's is free: the served numbers are Keras's."""
    model = official_examples.build(name)  # the same weights; Keras names its unnamed inputs anew
    rebuilt = step_model_from_keras(model)
    manifest = read_manifest(exported[name].path)
    loaded = tf.saved_model.load(str(exported[name].path))
    rng = np.random.default_rng(42)
    values = _new_data(model, rng, steps=11)
    by_input = dict(zip([t.name for t in model.inputs], values))
    extra = [i.name for i in (*rebuilt.static_inputs, *rebuilt.sequence_inputs)]
    main = next(t.name for t in model.inputs if t.name not in extra)
    keys = [i.name for i in (*manifest.static_inputs, *manifest.sequence_inputs)]
    feed = {"inputs": by_input[main], **{key: by_input[name] for key, name in zip(keys, extra)}}
    got = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in feed.items()})
    want = model(values if len(values) > 1 else values[0])
    want = want if isinstance(want, (list, tuple)) else [want]
    keys = [o.name for o in manifest.outputs] or ["outputs"]
    worst = max(float(np.max(np.abs(got[k].numpy() - np.asarray(w)))) for k, w in zip(keys, want))
    print(f"{name}: new data, max abs vs Keras {worst:.2e} (tol {manifest.options.tolerance.atol})")
    assert worst <= manifest.options.tolerance.atol


def test_a_fixed_length_model_refuses_another_length_naming_it_and_streams_any_chunks(exported):
    """`keras.Input((24, 7))`: `serving_default` takes 24 steps, as Keras does; `stream` takes chunks."""
    path = exported["weather_forecaster"].path
    assert read_manifest(path).fixed_steps == 24
    loaded = tf.saved_model.load(str(path))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must have 24 steps.*fixes its sequence length to 24"):
        loaded.signatures["serving_default"](inputs=tf.zeros([2, 10, 7]))
    state = loaded.signatures["initial_state"](batch_size=tf.constant(2))
    streamed = loaded.signatures["stream"](inputs=tf.ones([2, 10, 7]), **state)
    assert streamed["outputs"].shape == (2, 10, 1)


def test_the_hand_built_seq2seq_decoder_takes_its_states_as_inputs_and_returns_them(exported):
    """lstm_seq2seq's `decoder_model`: `[decoder_inputs, h, c] -> [softmax, h, c]`; h and c are static inputs
    that set the LSTM's state, and the new h, c come back as its last-step outputs."""
    manifest = read_manifest(exported["seq2seq_decoder"].path)
    assert [i.shape for i in manifest.static_inputs] == [(official_examples.LATENT_DIM,)] * 2
    assert [o.last_step for o in manifest.outputs] == [False, True, True]

