"""Several outputs (a list or dict of Keras outputs) through export and the fresh-process checks.

One export per model, shared by the session (tests/fixtures/several_outputs.py); every output
is checked against the source Keras model (outputs and gradients of a weighted sum over all of
them), over chunked `stream` calls and `step` T times.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from exporter.artifact.errors import UnsupportedModel
from exporter.artifact.manifest import read_manifest
from exporter.artifact.specs import SignatureName
from exporter.keras_model import step_model_from_keras
from tests.exporter import real_models
from tests.exporter.models import F

pytestmark = pytest.mark.slow
NAMES = sorted(real_models.SEVERAL_OUTPUTS)


@pytest.mark.parametrize("name", NAMES)
def test_several_outputs_export_and_verify_in_a_fresh_process(several_output_exports, name):
    export = several_output_exports[name]
    report = export.report
    _, keys, _ = real_models.SEVERAL_OUTPUTS[name]
    worst = max((c for c in report.checks if c.check.startswith(("source", "chunked"))), key=lambda c: c.max_abs)
    print(f"{name}: {report.summary()}; export {export.export_seconds:.2f} s; worst source/chunked "
          f"{worst.check} {worst.signature} {worst.tensor} {worst.max_abs:.2e}")
    assert report.passed, report.failures
    checked = {(c.check, c.signature, c.tensor) for c in report.checks}
    for key in keys:  # every output, in every check that proves the export equals the model
        assert ("source", "serving_default", key) in checked
        for label in ("stream x1", "stream x2", "stream x6", "step x6"):
            assert ("chunked", label, key) in checked
        for signature in ("serving_default", "stream", "step"):
            assert ("reload", signature, key) in checked
    assert {"source gradients", "chunked gradients", "gradients"} <= {c.check for c in report.checks}


@pytest.mark.parametrize("name", NAMES)
def test_every_signature_returns_every_output_by_name(several_output_exports, name):
    _, keys, last_step = real_models.SEVERAL_OUTPUTS[name]
    manifest = read_manifest(several_output_exports[name].path)
    assert [o.name for o in manifest.outputs] == list(keys)
    assert {o.name for o in manifest.outputs if o.last_step} == set(last_step)
    states = [s.name for s in manifest.states]
    for signature in (SignatureName.PREDICT, SignatureName.STREAM, SignatureName.STEP):
        outputs = manifest.signature(signature.value).outputs
        assert [t.name for t in outputs] == [*keys, *states]
        ranks = {t.name: len(t.shape) for t in outputs}
        for key in keys:
            # serving_default: a last-step output without its time axis; stream: every step; step: one step.
            want = {SignatureName.PREDICT: 2 if key in last_step else 3, SignatureName.STREAM: 3,
                    SignatureName.STEP: 2}[signature] + len(next(o for o in manifest.outputs if o.name == key).shape) - 1
            assert ranks[key] == want, (signature, key)


@pytest.mark.parametrize("name", NAMES)
def test_the_reloaded_export_equals_keras_on_new_sequences(several_output_exports, name):
    """Independent of the goldens: another batch and length, whole and in two `stream` chunks."""
    _, keys, last_step = real_models.SEVERAL_OUTPUTS[name]
    model = real_models.build(name)
    x = np.random.default_rng(11).normal(size=(2, 9, F)).astype("float32")
    want = model(x, training=False)
    want = dict(want) if isinstance(want, dict) else dict(zip(keys, want))
    loaded = tf.saved_model.load(str(several_output_exports[name].path))
    got = loaded.signatures["serving_default"](inputs=tf.constant(x))
    states = loaded.signatures["initial_state"](batch_size=tf.constant(2))
    first = loaded.signatures["stream"](inputs=tf.constant(x[:, :4]), **states)
    state_names = [s.name for s in read_manifest(several_output_exports[name].path).states]
    second = loaded.signatures["stream"](inputs=tf.constant(x[:, 4:]), **{n: first[n] for n in state_names})
    for key in keys:
        error = float(np.abs(got[key].numpy() - np.asarray(want[key])).max())
        chunked = np.concatenate([first[key].numpy(), second[key].numpy()], axis=1)
        chunked = chunked[:, -1] if key in last_step else chunked
        chunk_error = float(np.abs(chunked - np.asarray(want[key])).max())
        print(f"{name} {key}: max abs vs Keras {error:.2e}, two stream chunks {chunk_error:.2e}")
        assert error <= 1e-5 and chunk_error <= 1e-5


def test_one_output_keeps_its_keys(demo_export):
    manifest = read_manifest(demo_export.path)
    states = {s.name for s in manifest.states}
    assert manifest.outputs == ()
    assert {t.name for t in manifest.signature("stream").outputs} == {"outputs", *states}
    assert {t.name for t in manifest.signature("step").outputs} == {"y", *states}


def _dict_model(key):
    x = keras.Input((None, F))
    h = keras.layers.GRU(3, return_sequences=True, name="gru")(x)
    return keras.Model(x, {key: keras.layers.Dense(2)(h), "other": h})


@pytest.mark.parametrize("key, message", [
    ("gru_h", r"names \['gru_h'\] are repeated or clash with a state or input key"),
    ("inputs", r"names \['inputs'\] are repeated or clash"),
    ("two words", r"output 'two words' cannot be a serving key"),
])
def test_output_names_that_cannot_be_serving_keys_are_refused(key, message):
    with pytest.raises(UnsupportedModel, match=message):
        step_model_from_keras(_dict_model(key))
