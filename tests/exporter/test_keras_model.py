"""Real model shapes: probed per-step layers, causal convolutions, returned states, masks, dtypes.

Each streamable model goes through export and the fresh-process checks (source and chunked
included); each non-streamable one is refused by the probe with the offsets it found.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from exporter import keras_step
from exporter.artifact.errors import UnsupportedModel
from exporter.artifact.specs import ExportOptions
from exporter.keras_model import step_model_from_keras
from exporter.pipeline import write_export
from exporter.verification.run import verify_many_in_fresh_process
from tests.exporter import real_models

pytestmark = pytest.mark.slow
NO_HVP = ExportOptions(check_hvp=False)  # the Hessian-vector product has its own tests


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every streamable model exported, plus the pre-padded mask model as the code before
    input-computed masks built it (masks from `lengths` only); verified in ONE fresh process."""
    base = tmp_path_factory.mktemp("real")
    dirs = {}
    for name in real_models.STREAMABLE:
        dirs[name] = base / name
        write_export(step_model_from_keras(real_models.build(name)), dirs[name], name=name,
                     source={"kind": "test"}, options=NO_HVP)
    dirs["lengths_only_mask"] = base / "lengths_only_mask"
    real_rule = keras_step._mask_from_inputs
    keras_step._mask_from_inputs = lambda layer: None
    try:
        write_export(step_model_from_keras(real_models.build("pre_padded_mask")), dirs["lengths_only_mask"],
                     name="old", source={"kind": "test"}, options=NO_HVP)
    finally:
        keras_step._mask_from_inputs = real_rule
    reports = verify_many_in_fresh_process(list(dirs.values()))
    return {name: (dirs[name], report) for name, report in zip(dirs, reports)}


@pytest.mark.parametrize("name", sorted(real_models.STREAMABLE))
def test_streamable_model_verifies(exports, name):
    _, report = exports[name]
    worst = max((c for c in report.checks if c.check.startswith("source") or c.check.startswith("chunked")),
                key=lambda c: c.max_abs or 0.0)
    print(f"{name}: {report.summary()}; worst source/chunked {worst.check} {worst.signature} {worst.tensor} "
          f"{worst.max_abs:.2e}")
    assert report.passed, report.failures
    assert {"source", "source gradients", "chunked", "chunked gradients"} <= {c.check for c in report.checks}


def test_masks_from_lengths_alone_fail_on_pre_padded_probes(exports):
    """The bug that published wrong numbers: the probes now pad as users do, so it is caught."""
    _, report = exports["lengths_only_mask"]
    failing = {(c.check, c.signature) for c in report.failures}
    print(sorted(failing))
    assert ("source", "serving_default") in failing


def test_pre_padded_sequences_match_keras(exports):
    export_dir, _ = exports["pre_padded_mask"]
    model = real_models.build("pre_padded_mask")
    ids = keras.utils.pad_sequences([[3, 4, 5], [7, 8, 9, 10, 11], [1, 0, 2, 6]], maxlen=6)  # pre, pre, a hole
    loaded = tf.saved_model.load(str(export_dir))
    got = loaded.signatures["serving_default"](inputs=tf.constant(ids, tf.int32), lengths=tf.fill([3], 6))
    error = float(np.abs(got["outputs"].numpy() - model(ids).numpy()).max())
    print("pre-padded max abs vs Keras:", error)
    assert error <= 1e-6


def test_causal_conv_window_is_a_state():
    step_model = step_model_from_keras(real_models.build("causal_conv"))
    window = step_model.states[0]
    assert window.name.endswith("_window") and window.shape == ((3 - 1) * 2, 3)


def test_returned_states_feed_the_head():
    for name in ("return_state_c", "return_state_h_gru"):
        assert step_model_from_keras(real_models.build(name)).last_step_only


def test_dtypes_follow_the_model():
    assert {s.dtype for s in step_model_from_keras(real_models.build("float64")).states} == {"float64"}
    mixed = step_model_from_keras(real_models.build("mixed_float16"))
    assert {s.dtype for s in mixed.states} == {"float16"}
    assert {v.dtype.name for v in mixed.trainable_variables} == {"float32"}


@pytest.mark.parametrize("name", sorted(real_models.NOT_STREAMABLE))
def test_probe_refuses_layers_that_mix_time(name):
    _, expected = real_models.NOT_STREAMABLE[name]
    with pytest.raises(UnsupportedModel, match="cannot run step by step") as info:
        step_model_from_keras(real_models.build(name))
    print(info.value)
    assert expected in str(info.value)


@pytest.mark.parametrize("wrap", [lambda y: {"only": y}, lambda y: [y]])
def test_one_output_in_a_dict_or_list_keeps_the_one_output_keys(tmp_path, wrap):
    """A dict or list of one output is one output: keys `outputs` and `y`, the source check on it."""
    x = keras.Input((None, 3))
    model = keras.Model(x, wrap(keras.layers.Dense(2)(keras.layers.GRU(4, return_sequences=True, name="gru")(x))))
    step_model = step_model_from_keras(model)
    assert step_model.outputs == ()
    manifest = write_export(step_model, tmp_path / "e", name="one", source={"kind": "test"}, options=NO_HVP)
    assert {t.name for t in manifest.signature("step").outputs} == {"y", "gru_h"}
    want = np.asarray(tf.nest.flatten(model(np.ones((1, 6, 3), "float32")))[0])
    np.testing.assert_array_equal(np.asarray(step_model.reference_fn(tf.ones((1, 6, 3)))), want)
