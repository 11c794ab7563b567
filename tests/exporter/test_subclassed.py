"""Subclassed models (exporter/subclassed.py): streamed on their RNN layers' states where a probe shows the
chunks give the whole call's numbers, whole-sequence where they do not."""

from __future__ import annotations

import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from exporter.artifact.errors import CannotStream
from exporter.artifact.manifest import read_manifest
from exporter.artifact.specs import ExportOptions
from exporter.keras_model import step_model_from_keras
from tests.exporter import official_examples
from tests.fixtures import export_then_verify_together

pytestmark = pytest.mark.slow

STREAMED = ("text_generation_gru", "residual_lstm")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_then_verify_together(tmp_path_factory.mktemp("subclassed"), (*STREAMED, "feedback_forecaster"),
                                       lambda name: ExportOptions(check_hvp=name == "residual_lstm"),
                                       builders=official_examples.build, fall_back=True)


@pytest.mark.parametrize("name", STREAMED)
def test_a_subclassed_model_with_rnn_layers_streams_and_verifies(exported, name):
    """The TF tutorials' `MyModel` (Embedding, GRU, Dense) and `ResidualWrapper` (input + LSTM/Dense delta):
    every streaming check holds, the fused one comparing its whole call with a step at a time."""
    report = exported[name].report
    assert report.passed, report.failures
    manifest = read_manifest(exported[name].path)
    assert manifest.streams and manifest.states
    assert {"chunked", "chunked gradients", "fused"} <= {c.check for c in report.checks}
    print(f"{name}: {report.summary()}; states {[s.name for s in manifest.states]}")


def test_the_streamed_text_model_continues_a_sequence_as_the_whole_call_does(exported):
    """Stream a prompt, then one id at a time from the returned state: the tutorial's generation loop,
    without re-running the prefix; equal to the model's whole call on the prompt and ids together."""
    loaded = tf.saved_model.load(str(exported["text_generation_gru"].path))
    model = official_examples.build("text_generation_gru")
    ids = np.random.default_rng(3).integers(1, 30, size=(2, 9)).astype("int32")
    states = loaded.signatures["initial_state"](batch_size=tf.constant(2))
    first = loaded.signatures["stream"](inputs=ids[:, :6], **states)
    state = {k: v for k, v in first.items() if k != "outputs"}
    pieces = [first["outputs"].numpy()]
    for t in range(6, 9):
        stepped = loaded.signatures["step"](x=ids[:, t], **state)
        pieces.append(stepped["y"].numpy()[:, None])
        state = {k: v for k, v in stepped.items() if k != "y"}
    worst = float(np.max(np.abs(np.concatenate(pieces, axis=1) - np.asarray(model(ids)))))
    print(f"prompt of 6, then 3 steps: max abs vs the whole call {worst:.2e}")
    assert worst <= 1e-5


def test_a_feedback_model_exports_whole_sequence(exported):
    """The time-series tutorial's `FeedBack` feeds its predictions back in a Python loop: no sequence out per
    step in, so whole-sequence, with every check that applies."""
    report = exported["feedback_forecaster"].report
    assert report.passed, report.failures
    assert "(FeedBack) is subclassed and returns" in read_manifest(exported["feedback_forecaster"].path).whole_sequence


class _RunningMean(keras.Model):
    """A GRU, then a running mean over time: it mixes steps outside its RNN layer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gru = keras.layers.GRU(4, return_sequences=True)

    def call(self, x):
        h = self.gru(x)
        return keras.ops.cumsum(h, axis=1) / keras.ops.arange(1, keras.ops.shape(h)[1] + 1, dtype="float32")[:, None]


def test_a_subclassed_model_that_mixes_steps_outside_its_rnn_layers_does_not_stream():
    model = _RunningMean(name="running_mean")
    model(tf.zeros((2, 5, 3)))
    with pytest.raises(CannotStream, match="streamed in chunks of 2, 3 and 1 steps on its RNN layers' states its "
                                           "probe gives other numbers than its whole call"):
        step_model_from_keras(model)
    assert not step_model_from_keras(model, fall_back=True).streams


TUTORIAL_MODELS = textwrap.dedent('''
    import keras

    @keras.saving.register_keras_serializable(package="tutorial")
    class MyModel(keras.Model):
        """The text-generation tutorial's model, with the `get_config` Keras needs to save it."""

        def __init__(self, vocab_size, embedding_dim, rnn_units, **kwargs):
            super().__init__(**kwargs)
            self.vocab_size, self.embedding_dim, self.rnn_units = vocab_size, embedding_dim, rnn_units
            self.embedding = keras.layers.Embedding(vocab_size, embedding_dim)
            self.gru = keras.layers.GRU(rnn_units, return_sequences=True, return_state=True)
            self.dense = keras.layers.Dense(vocab_size)

        def call(self, inputs, states=None, return_state=False, training=False):
            x = self.embedding(inputs, training=training)
            if states is None:
                states = self.gru.get_initial_state(keras.ops.shape(x)[0])
            x, states = self.gru(x, initial_state=states, training=training)
            x = self.dense(x, training=training)
            return (x, states) if return_state else x

        def get_config(self):
            return {**super().get_config(), "vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim,
                    "rnn_units": self.rnn_units}
''')


def test_a_subclassed_model_saved_to_keras_exports_from_the_file(tmp_path, monkeypatch):
    """The tutorial's `MyModel` with a `get_config`, saved to `.keras`: `seqexport export model.keras --import
    MODULE` loads it (Keras needs the class registered: without --import, exit 2 naming the module) and streams
    it, every check passing; the export equals the in-memory model it was saved from."""
    import json

    from typer.testing import CliRunner

    from exporter.cli.app import app

    (tmp_path / "tutorial_models.py").write_text(TUTORIAL_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import tutorial_models

    keras.utils.set_random_seed(4)
    model = tutorial_models.MyModel(vocab_size=24, embedding_dim=8, rnn_units=12)
    model(keras.ops.zeros((2, 7), dtype="int32"))
    model.save(tmp_path / "text_gen.keras")
    keras.saving.get_custom_objects().pop("tutorial>MyModel")  # as in a fresh process that never imported it
    sys.modules.pop("tutorial_models")
    base = tmp_path / "models"
    try:
        refused = CliRunner().invoke(app, ["export", "text_gen.keras", "--name", "text_gen", "--base", str(base), "--json"])
        assert refused.exit_code == 2 and "--import tutorial_models" in json.loads(refused.stdout)["error"]
        result = CliRunner().invoke(app, ["export", "text_gen.keras", "--name", "text_gen", "--base", str(base), "--import",
                                          "tutorial_models", "--json"])
    finally:
        keras.saving.get_custom_objects().pop("tutorial>MyModel", None)
        sys.modules.pop("tutorial_models", None)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"]
    manifest = read_manifest(base / "text_gen" / "1")
    assert manifest.streams and [s.name for s in manifest.states] and manifest.source["kind"] == "keras_file"
    checks = [c for c in manifest.checks if not c.not_applicable]
    assert {"chunked", "source", "fused"} <= {c.check for c in checks} and all(c.passed for c in checks)
    print(f"from .keras: {len(checks)} checks passed, states {[s.name for s in manifest.states]}")
    ids = np.random.default_rng(8).integers(1, 24, size=(4, 11)).astype("int32")
    loaded = tf.saved_model.load(str(base / "text_gen" / "1"))
    got = loaded.signatures["serving_default"](inputs=tf.constant(ids))["outputs"].numpy()
    worst = float(np.max(np.abs(got - np.asarray(model(ids)))))
    print(f"export from the file vs the in-memory model, new ids [4, 11]: max abs {worst:.2e}")
    assert worst <= 1e-5
