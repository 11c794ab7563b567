"""Several outputs (a list or dict of Keras outputs) through export and the fresh-process checks.

One export per model, shared by the session (tests/fixtures/several_outputs.py); every output
is checked against the source Keras model (outputs and gradients of a weighted sum over all of
them), over chunked `stream` calls and `step` T times. The same for static inputs and for several
sequence inputs (tests/fixtures/static_inputs.py, tests/fixtures/sequence_inputs.py).
"""

from __future__ import annotations

import json

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


def _assert_passed(name: str, export) -> None:
    """Prints the export's summary, time and worst source/chunked row; asserts every check passed."""
    report = export.report
    worst = max((c for c in report.checks if c.check.startswith(("source", "chunked"))), key=lambda c: c.max_abs)
    print(f"{name}: {report.summary()}; export {export.export_seconds:.2f} s; worst source/chunked "
          f"{worst.check} {worst.signature} {worst.tensor} {worst.max_abs:.2e}")
    assert report.passed, report.failures


@pytest.mark.parametrize("name", NAMES)
def test_several_outputs_export_and_verify_in_a_fresh_process(several_output_exports, name):
    export = several_output_exports[name]
    report = export.report
    _, keys, _ = real_models.SEVERAL_OUTPUTS[name]
    _assert_passed(name, export)
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


# --- static inputs: no time axis, fed once per call, seen at every step -----------------------------------

STATIC = sorted(real_models.STATIC_INPUTS)


@pytest.mark.parametrize("name", STATIC)
def test_static_inputs_export_and_verify_in_a_fresh_process(static_input_exports, name):
    export = static_input_exports[name]
    report = export.report
    _, static = real_models.STATIC_INPUTS[name]
    _assert_passed(name, export)
    checked = {(c.check, c.signature, c.tensor) for c in report.checks}
    assert ("source", "serving_default", "outputs") in checked
    for label in ("stream x1", "stream x2", "stream x6", "step x6"):
        assert ("chunked", label, "outputs") in checked
    for key in static:  # gradients w.r.t. each static input, against Keras and over chunked calls
        assert ("source gradients", "serving_default", f"d/{key}") in checked
        for label in ("stream x1", "stream x2", "stream x6"):
            assert ("chunked gradients", label, f"d/{key}") in checked
        for signature in ("serving_default", "stream", "step"):
            assert ("gradients", signature, f"d/{key}") in checked


@pytest.mark.parametrize("name", STATIC)
def test_every_signature_takes_the_static_inputs_and_the_manifest_lists_them(static_input_exports, name):
    _, static = real_models.STATIC_INPUTS[name]
    path = static_input_exports[name].path
    manifest = read_manifest(path)
    assert [i.name for i in manifest.static_inputs] == list(static)
    assert all(len(i.shape) == 1 for i in manifest.static_inputs)
    data = json.loads((path / "assets.extra/seqexport/manifest.json").read_text())
    # The oldest format that holds it: 4 for static inputs, 6 where the sequence Input also fixes the length.
    assert data["format_version"] == (6 if data.get("fixed_steps") else 4)
    for signature in SignatureName:
        if signature.value in {s.name for s in manifest.signatures}:
            inputs = {t.name: t for t in manifest.signature(signature.value).inputs}
            for key in static:
                assert inputs[key].shape == (None, 3), (signature, key)


@pytest.mark.parametrize("name", STATIC)
def test_the_reloaded_static_input_export_equals_keras_on_new_sequences(static_input_exports, name):
    """Independent of the goldens: another batch, whole and in two `stream` chunks from `initial_state`
    (which a static input sets where it feeds `initial_state=`), and `step` T times."""
    _, (key,) = real_models.STATIC_INPUTS[name]
    steps = real_models.STATIC_STEPS
    model = real_models.build(name)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(4, steps, F)).astype("float32")
    features = rng.normal(size=(4, 3)).astype("float32")
    want = np.asarray(model([x, features], training=False))
    path = static_input_exports[name].path
    state_names = [s.name for s in read_manifest(path).states]
    loaded = tf.saved_model.load(str(path))
    static = {key: tf.constant(features)}
    got = loaded.signatures["serving_default"](inputs=tf.constant(x), **static)["outputs"].numpy()
    states = loaded.signatures["initial_state"](batch_size=tf.constant(4), **static)
    first = loaded.signatures["stream"](inputs=tf.constant(x[:, :2]), **static, **states)
    second = loaded.signatures["stream"](inputs=tf.constant(x[:, 2:]), **static,
                                         **{n: first[n] for n in state_names})
    chunked = np.concatenate([first["outputs"].numpy(), second["outputs"].numpy()], axis=1)
    ys, carried = [], dict(states)
    for t in range(steps):
        result = loaded.signatures["step"](x=tf.constant(x[:, t]), **static, **carried)
        ys.append(result["y"].numpy())
        carried = {n: result[n] for n in state_names}
    errors = [float(np.abs(a - want).max()) for a in (got, chunked, np.stack(ys, axis=1))]
    print(f"{name}: max abs vs Keras (whole, 2 stream chunks, step x{steps}) {errors}")
    assert max(errors) <= 1e-5
    # The static input is used: other features give other outputs.
    other = loaded.signatures["serving_default"](inputs=tf.constant(x), **{key: tf.constant(features + 1)})
    assert float(np.abs(other["outputs"].numpy() - got).max()) > 1e-3


def test_one_input_manifest_keeps_its_keys_and_format(demo_export):
    data = json.loads((demo_export.path / "assets.extra/seqexport/manifest.json").read_text())
    assert "static_inputs" not in data and data["format_version"] == 3
    assert read_manifest(demo_export.path).static_inputs == ()


def _two_sequences_of_different_lengths():
    x, y = keras.Input((5, F), name="frames"), keras.Input((7, F), name="events")
    return keras.Model([x, y], keras.layers.GRU(2, return_sequences=True)(x) + keras.layers.GRU(2)(y)[:, None])


def _two_sequences_masked():
    x, y = keras.Input((None,), dtype="int32", name="tokens"), keras.Input((None, F), name="frames")
    merged = keras.layers.Concatenate()([keras.layers.Embedding(9, 3, mask_zero=True)(x), y])
    return keras.Model([x, y], keras.layers.GRU(2, return_sequences=True)(merged))


def _static_merged_without_repeat():
    x, s = keras.Input((None, F)), keras.Input((3,), name="context")
    h = keras.layers.GRU(2, return_sequences=True)(x)
    return keras.Model([x, s], h + keras.layers.Dense(2)(s)[:, None])


def _initial_state_from_another_rnn():
    x = keras.Input((None, F))
    _, h = keras.layers.GRU(2, return_state=True)(x)
    decoded = keras.layers.GRU(2, return_sequences=True)(x, initial_state=h)
    return keras.Model(x, keras.layers.Add()([decoded, keras.layers.Dense(2)(x)]))  # a graph, not a chain


@pytest.mark.parametrize("build, message", [
    (_two_sequences_of_different_lengths, r"has sequence inputs of different time lengths \(frames T=5, events "
                                          r"T=7\); .* Inputs of different lengths are not supported"),
    (_static_merged_without_repeat, r"merges a static input's tensor \(no time axis\) with a per-step or last-step "
                                    r"one; a static input may feed `RepeatVector`"),
    (_initial_state_from_another_rnn, r"its `initial_state=` is computed from the sequence it steps through"),
])
def test_what_static_inputs_do_not_cover_is_refused_with_what_is_supported(build, message):
    with pytest.raises(UnsupportedModel, match=message):
        step_model_from_keras(build())


def _repeat_model(input_steps, repeat_steps):
    x = keras.Input((input_steps, F), name="x")
    s = keras.Input((3,), name="speaker")
    per_step = keras.layers.RepeatVector(repeat_steps)(keras.layers.Dense(4)(s))
    h = keras.layers.GRU(5, return_sequences=True)(keras.layers.Concatenate()([x, per_step]))
    return keras.Model([x, s], keras.layers.Dense(2)(h))


@pytest.mark.parametrize("input_steps, repeat_steps, steps", [(None, 9, 9), (9, 9, 9)])
def test_a_model_fixed_to_one_length_is_probed_with_that_length(tmp_path, input_steps, repeat_steps, steps):
    from exporter.artifact import golden_io
    from exporter.artifact.paths import golden_path
    from exporter.pipeline import write_export

    step_model = step_model_from_keras(_repeat_model(input_steps, repeat_steps))
    assert step_model.reference_steps == steps
    manifest = write_export(step_model, tmp_path / "m", name="m", source={"kind": "test"})
    assert manifest.options.probe_steps == steps
    assert golden_io.load(golden_path(tmp_path / "m"))["serving_default/in/inputs"].shape[1] == steps


def test_a_model_of_one_step_is_refused():
    with pytest.raises(UnsupportedModel, match="takes sequences of 1 step only.*needs at least 2 steps"):
        step_model_from_keras(_repeat_model(None, 1))


# --- masks through a graph: each tensor's Keras mask, step by step -----------------------------------------

MASKED = sorted(real_models.MASKED_GRAPHS)


@pytest.mark.parametrize("name", MASKED)
def test_masked_graphs_export_and_verify_in_a_fresh_process(masked_graph_exports, name):
    export = masked_graph_exports[name]
    report = export.report
    _, keys, _, _ = real_models.MASKED_GRAPHS[name]
    _assert_passed(name, export)
    manifest = read_manifest(export.path)
    assert manifest.masked and {t.name for t in manifest.signature("stream").inputs} >= {"inputs", "lengths"}
    checked = {(c.check, c.signature, c.tensor) for c in report.checks}
    for key in keys:  # the probes hold a pre-padded row and a row with a hole: every pattern, every output
        assert ("source", "serving_default", key) in checked
        for label in ("stream x1", "stream x2", "stream x6", "step x6"):
            assert ("chunked", label, key) in checked
    assert {"source gradients", "chunked gradients"} <= {c.check for c in report.checks}


def _padded_probe(name: str):
    """New data (not the goldens'): a whole row, a pre-padded one and one with a hole, 9 steps."""
    rng = np.random.default_rng(23)
    if real_models.MASKED_GRAPHS[name][3] == "int32":
        rows = [rng.integers(1, real_models.VOCAB, size=n).tolist() for n in (9, 4)] + [[5, 3, 0, 0, 7, 2, 9, 1]]
        return keras.utils.pad_sequences(rows, maxlen=9).astype("int32")  # pre-padding, as Keras pads
    x = rng.normal(size=(3, 9, F)).astype("float32")
    x[1, :5] = 0.0  # pre-padded
    x[2, 3:5] = 0.0  # a hole
    return x


@pytest.mark.parametrize("name", MASKED)
def test_the_reloaded_masked_graph_equals_keras_on_padded_sequences(masked_graph_exports, name):
    """Independent of the goldens: pre-padded and holed rows, whole and in two `stream` chunks."""
    _, keys, last_step, _ = real_models.MASKED_GRAPHS[name]
    model = real_models.build(name)
    x = _padded_probe(name)
    want = model(x, training=False)
    want = dict(want) if isinstance(want, dict) else {"outputs": want}
    path = masked_graph_exports[name].path
    state_names = [s.name for s in read_manifest(path).states]
    loaded = tf.saved_model.load(str(path))
    full = tf.fill([3], 9)
    got = loaded.signatures["serving_default"](inputs=tf.constant(x), lengths=full)
    states = loaded.signatures["initial_state"](batch_size=tf.constant(3))
    first = loaded.signatures["stream"](inputs=tf.constant(x[:, :4]), lengths=tf.fill([3], 4), **states)
    second = loaded.signatures["stream"](inputs=tf.constant(x[:, 4:]), lengths=tf.fill([3], 5),
                                         **{n: first[n] for n in state_names})
    for key in keys:
        error = float(np.abs(got[key].numpy() - np.asarray(want[key])).max())
        chunked = np.concatenate([first[key].numpy(), second[key].numpy()], axis=1)
        chunked = chunked[:, -1] if key in last_step else chunked
        chunk_error = float(np.abs(chunked - np.asarray(want[key])).max())
        print(f"{name} {key}: max abs vs Keras {error:.2e}, two stream chunks {chunk_error:.2e}")
        assert error <= 1e-5 and chunk_error <= 1e-5


def test_merges_that_drop_the_mask_fail_the_source_check(masked_graph_exports):
    """A wrong mask rule (every merge drops the mask, so the last LSTM steps through the padding) is
    caught by the pre-padded and holed golden probes."""
    from tests.fixtures.masked_graphs import BROKEN

    report = masked_graph_exports[BROKEN].report
    failing = {(c.check, c.signature) for c in report.failures}
    print(sorted(failing))
    assert ("source", "serving_default") in failing


# --- masks with static inputs: the static values feed the masked graph once per call --------------------

MASKED_STATIC = sorted(real_models.MASKED_STATIC)


@pytest.mark.parametrize("name", MASKED_STATIC)
def test_masked_static_input_graphs_export_and_verify_in_a_fresh_process(masked_graph_exports, name):
    export = masked_graph_exports[name]
    report = export.report
    _, statics, _ = real_models.MASKED_STATIC[name]
    _assert_passed(name, export)
    manifest = read_manifest(export.path)
    assert manifest.masked and [i.name for i in manifest.static_inputs] == list(statics)
    checked = {(c.check, c.signature, c.tensor) for c in report.checks}
    for label in ("stream x1", "stream x2", "stream x6", "step x6"):
        assert ("chunked", label, "outputs") in checked
    for key in statics:
        assert ("source gradients", "serving_default", f"d/{key}") in checked


@pytest.mark.parametrize("name", MASKED_STATIC)
def test_the_reloaded_masked_static_input_graph_equals_keras_on_padded_sequences(masked_graph_exports, name):
    """Independent of the goldens: pre-padded and holed rows with their static inputs, whole and in two
    `stream` chunks started from `initial_state` of the static inputs."""
    _, statics, dtype = real_models.MASKED_STATIC[name]
    model = real_models.build(name)
    rng = np.random.default_rng(29)
    steps = real_models.STATIC_STEPS
    if dtype == "int32":
        rows = [rng.integers(1, real_models.VOCAB, size=n).tolist() for n in (6, 3)] + [[5, 3, 0, 0, 7, 2]]
        x = keras.utils.pad_sequences(rows, maxlen=steps).astype("int32")
    else:
        x = rng.normal(size=(3, steps, F)).astype("float32")
        x[1, :3] = 0.0  # pre-padded
        x[2, 2:4] = 0.0  # a hole
    static = {key: rng.normal(size=(3, int(model.get_layer(key).batch_shape[1]))).astype("float32") for key in statics}
    by_name = {model.inputs[0].name: x, **static}
    want = np.asarray(model([by_name[t.name] for t in model.inputs], training=False))
    path = masked_graph_exports[name].path
    state_names = [s.name for s in read_manifest(path).states]
    signatures = tf.saved_model.load(str(path)).signatures
    feeds = {k: tf.constant(v) for k, v in static.items()}
    got = signatures["serving_default"](inputs=tf.constant(x), lengths=tf.fill([3], steps), **feeds)["outputs"]
    states = signatures["initial_state"](batch_size=tf.constant(3), **feeds)
    first = signatures["stream"](inputs=tf.constant(x[:, :2]), lengths=tf.fill([3], 2), **feeds, **states)
    second = signatures["stream"](inputs=tf.constant(x[:, 2:]), lengths=tf.fill([3], steps - 2), **feeds,
                                  **{n: first[n] for n in state_names})
    chunked = np.concatenate([first["outputs"].numpy(), second["outputs"].numpy()], axis=1)
    errors = [float(np.abs(a - want).max()) for a in (got.numpy(), chunked)]
    print(f"{name}: max abs vs Keras (whole, two stream chunks) {errors}")
    assert max(errors) <= 1e-5


def test_an_initial_state_rnn_given_the_mask_fails_the_source_check(masked_graph_exports):
    """Keras passes no mask to an RNN called with `initial_state=`: an export that masks it anyway
    skips the padded steps Keras runs through, and the pre-padded and holed probes catch it."""
    from tests.fixtures.masked_graphs import BROKEN_INITIAL_STATE

    failing = {(c.check, c.signature) for c in masked_graph_exports[BROKEN_INITIAL_STATE].report.failures}
    print(sorted(failing))
    assert ("source", "serving_default") in failing


def _two_pad_values():
    x = keras.Input((None, F))
    left = keras.layers.GRU(2, return_sequences=True)(keras.layers.Masking(0.0, name="zeros")(x))
    right = keras.layers.GRU(2, return_sequences=True)(keras.layers.Masking(-1.0, name="minus_one")(x))
    return keras.Model(x, keras.layers.Add()([left, right]))


def _mask_after_a_dense():
    x = keras.Input((None, F))
    masked = keras.layers.Masking(0.0, name="late_mask")(keras.layers.Dense(3)(x))
    return keras.Model(x, keras.layers.Add()([keras.layers.GRU(2, return_sequences=True)(masked),
                                              keras.layers.Dense(2)(x)]))


def _mask_into_a_custom_cell():
    x = keras.Input((None, F))
    masked = keras.layers.Masking(0.0)(x)
    cells = keras.layers.StackedRNNCells([keras.layers.GRUCell(3), keras.layers.GRUCell(2)])
    h = keras.layers.RNN(cells, return_sequences=True, name="stacked")(masked)
    return keras.Model(x, keras.layers.Add()([h, keras.layers.Dense(2)(masked)]))


@pytest.mark.parametrize("build, message", [
    (_two_pad_values, r"\(Masking\) cannot run step by step: it marks padding with -?[01]\.0, while "
                      r"'(zeros|minus_one)' marks it with -?[01]\.0; padding is marked with one value"),
    (_mask_after_a_dense, r"'late_mask' \(Masking\) cannot run step by step: it starts a Keras mask from a tensor "
                          r"other than the main sequence input"),
    (_mask_into_a_custom_cell, r"'stacked' \(RNN\) cannot run step by step: masking is supported for SimpleRNN, "
                               r"GRU and LSTM cells only"),
])
def test_masks_the_graph_cannot_carry_exactly_are_refused_by_layer(build, message):
    with pytest.raises(UnsupportedModel, match=message) as info:
        step_model_from_keras(build())
    print(info.value)


# --- several sequence inputs: one time axis, each input sliced per step ------------------------------------

SEQUENCES = sorted(real_models.SEQUENCE_INPUTS)


@pytest.mark.parametrize("name", SEQUENCES)
def test_sequence_inputs_export_and_verify_in_a_fresh_process(sequence_input_exports, name):
    export = sequence_input_exports[name]
    report = export.report
    _, sequences, static = real_models.SEQUENCE_INPUTS[name]
    _assert_passed(name, export)
    checked = {(c.check, c.signature, c.tensor) for c in report.checks}
    steps = real_models.SEQUENCE_STEPS
    assert ("source", "serving_default", "outputs") in checked
    for label in ("stream x1", "stream x2", f"stream x{steps}", f"step x{steps}"):
        assert ("chunked", label, "outputs") in checked
    for key in (*sequences, *static):  # float inputs: gradients against Keras and through chunked calls
        assert ("source gradients", "serving_default", f"d/{key}") in checked
        for label in ("stream x1", "stream x2", f"stream x{steps}"):
            assert ("chunked gradients", label, f"d/{key}") in checked
        for signature in ("serving_default", "stream", "step"):
            assert ("gradients", signature, f"d/{key}") in checked


@pytest.mark.parametrize("name", SEQUENCES)
def test_every_signature_takes_the_sequence_inputs_and_the_manifest_lists_them(sequence_input_exports, name):
    _, sequences, static = real_models.SEQUENCE_INPUTS[name]
    path = sequence_input_exports[name].path
    manifest = read_manifest(path)
    data = json.loads((path / "assets.extra/seqexport/manifest.json").read_text())
    assert data["format_version"] == 5 and [i["name"] for i in data["sequence_inputs"]] == list(sequences)
    assert [i.name for i in manifest.sequence_inputs] == list(sequences)
    assert [i.name for i in manifest.static_inputs] == list(static)
    loaded = tf.saved_model.load(str(path))
    for signature in manifest.signatures:
        inputs = {t.name: t for t in signature.inputs}
        for spec in manifest.sequence_inputs:
            if signature.name == "initial_state":  # states start from zeros or static inputs, never a sequence
                assert spec.name not in inputs
            elif signature.name == "step":
                assert inputs[spec.name].shape == (None, *spec.shape)
            else:
                assert inputs[spec.name].shape == (None, None, *spec.shape), (signature.name, spec.name)
        assert set(loaded.signatures[signature.name].structured_input_signature[1]) == set(inputs)


@pytest.mark.parametrize("name", SEQUENCES)
def test_the_reloaded_sequence_input_export_equals_keras_on_new_data(sequence_input_exports, name):
    """Independent of the goldens: another batch, whole, in two `stream` chunks and `step` T times; then
    every sequence input is shown to be read (changing it changes the outputs), and a T that differs
    from `inputs`' fails by name."""
    model = real_models.build(name)
    steps = real_models.SEQUENCE_STEPS
    rng = np.random.default_rng(11)
    values = []
    for tensor in model.inputs:
        shape = (4, *(steps if d is None else d for d in tensor.shape[1:]))
        values.append(rng.integers(1, 11, size=shape).astype("int32") if "int" in str(tensor.dtype)
                      else rng.normal(size=shape).astype("float32"))
    want = np.asarray(model(values, training=False))
    path = sequence_input_exports[name].path
    manifest = read_manifest(path)
    by_name = dict(zip((t.name for t in model.inputs), values))
    main = values[0]
    sequences = {i.name: by_name[i.name] for i in manifest.sequence_inputs}
    static = {i.name: tf.constant(by_name[i.name]) for i in manifest.static_inputs}
    state_names = [s.name for s in manifest.states]
    signatures = tf.saved_model.load(str(path)).signatures

    def cut(start, stop):
        return {"inputs": tf.constant(main[:, start:stop]),
                **{k: tf.constant(v[:, start:stop]) for k, v in sequences.items()}, **static}

    got = signatures["serving_default"](**cut(0, steps))["outputs"].numpy()
    states = signatures["initial_state"](batch_size=tf.constant(4), **static)
    first = signatures["stream"](**cut(0, 2), **states)
    second = signatures["stream"](**cut(2, steps), **{n: first[n] for n in state_names})
    chunked = np.concatenate([first["outputs"].numpy(), second["outputs"].numpy()], axis=1)
    ys, carried = [], dict(states)
    for t in range(steps):
        slices = {k: tf.constant(v[:, t]) for k, v in sequences.items()}
        result = signatures["step"](x=tf.constant(main[:, t]), **slices, **static, **carried)
        ys.append(result["y"].numpy())
        carried = {n: result[n] for n in state_names}
    errors = [float(np.abs(a - want).max()) for a in (got, chunked, np.stack(ys, axis=1))]
    print(f"{name}: max abs vs Keras (whole, 2 stream chunks, step x{steps}) {errors}")
    assert max(errors) <= 1e-5
    for key, value in sequences.items():  # each one is read: other values give other outputs
        feed = cut(0, steps) | {key: tf.constant(value + 1)}
        assert float(np.abs(signatures["serving_default"](**feed)["outputs"].numpy() - got).max()) > 1e-3
        with pytest.raises(tf.errors.InvalidArgumentError, match=rf"input \W*{key}\W* must have as many steps"):
            signatures["serving_default"](**(cut(0, steps) | {key: tf.constant(value[:, :-1])}))


def test_fixed_length_token_ids_read_by_an_embedding_are_the_sequence(tmp_path):
    """`pad_sequences(maxlen=9)` ids, `Input((9,), dtype="int32")`: the Embedding gives each id a step,
    so they are the sequence (probed with 9 steps) and only `speaker` is static; export + fresh verify."""
    import exporter

    keras.utils.set_random_seed(4)
    ids, speaker = keras.Input((9,), dtype="int32", name="ids"), keras.Input((2,), name="speaker")
    merged = keras.layers.Concatenate()([keras.layers.Embedding(11, 4)(ids),
                                         keras.layers.RepeatVector(9)(keras.layers.Dense(3)(speaker))])
    model = keras.Model([ids, speaker], keras.layers.Dense(2)(keras.layers.GRU(3, return_sequences=True)(merged)))
    result = exporter.export(model, name="ids", base=tmp_path)
    print(result.report.summary())
    assert result.report.passed, result.report.failures
    manifest = read_manifest(result.path)
    assert [i.name for i in manifest.static_inputs] == ["speaker"] and not manifest.sequence_inputs
    inputs = {t.name: t for t in manifest.signature("serving_default").inputs}
    assert inputs["inputs"].shape == (None, None) and inputs["inputs"].dtype == "int32"
    assert ("chunked", "step x9", "outputs") in {(c.check, c.signature, c.tensor) for c in result.report.checks}


def test_a_mask_on_the_main_input_goes_with_other_sequence_inputs(tmp_path):
    """Token ids with `mask_zero=True` concatenated per step with float frames: the mask comes from the
    ids (the main input) and masks the GRU's steps for both; export + fresh verify, then new pre-padded
    and holed rows against Keras, whole and in two `stream` chunks."""
    import exporter

    keras.utils.set_random_seed(6)
    model = _two_sequences_masked()
    result = exporter.export(model, name="masked_two", base=tmp_path)
    print(result.report.summary())
    assert result.report.passed, result.report.failures
    manifest = read_manifest(result.path)
    assert manifest.masked and [i.name for i in manifest.sequence_inputs] == ["frames"]
    ids = keras.utils.pad_sequences([[3, 1, 4, 1, 5, 2, 6], [2, 7], [5, 3, 0, 0, 7, 2]], maxlen=7).astype("int32")
    frames = np.random.default_rng(8).normal(size=(3, 7, F)).astype("float32")
    want = np.asarray(model([ids, frames], training=False))
    signatures = tf.saved_model.load(str(result.path)).signatures
    full = tf.fill([3], 7)
    got = signatures["serving_default"](inputs=ids, frames=frames, lengths=full)["outputs"].numpy()
    states = signatures["initial_state"](batch_size=tf.constant(3))
    first = signatures["stream"](inputs=ids[:, :3], frames=frames[:, :3], lengths=tf.fill([3], 3), **states)
    second = signatures["stream"](inputs=ids[:, 3:], frames=frames[:, 3:], lengths=tf.fill([3], 4),
                                  **{s.name: first[s.name] for s in manifest.states})
    chunked = np.concatenate([first["outputs"].numpy(), second["outputs"].numpy()], axis=1)
    errors = [float(np.abs(a - want).max()) for a in (got, chunked)]
    print(f"max abs vs Keras (whole, two stream chunks) {errors}")
    assert max(errors) <= 1e-5


def test_a_sequence_input_step_model_checks_its_keys():
    from exporter.artifact.specs import InputSpec, StateSpec
    from exporter.step_model import StepModel

    spec = StateSpec(name="h", layer="cell", index=0, shape=(2,))
    with pytest.raises(ValueError, match=r"input names \['h'\] are repeated or clash"):
        StepModel(step_fn=lambda x, s, e: (x, s), input_shape=(2,), output_shape=(2,), states=(spec,),
                  sequence_inputs=(InputSpec(name="h", shape=(2,)),))
