"""User mistakes: exit 2, a one-paragraph message naming the culprit, nothing under --base."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from exporter.cli.app import app
from tests.exporter import models, real_models

runner = CliRunner()


def _export(*args):
    return runner.invoke(app, ["export", *map(str, args)])


def _assert_bad_input(result, *fragments, base=None):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    if base is not None:
        assert not base.exists() or not any(base.iterdir()), list(base.rglob("*"))


@pytest.mark.parametrize("name", sorted(models.UNSUPPORTED))
def test_unsupported_layer_exit_2_names_it(tmp_path, name):
    path = tmp_path / f"{name}.keras"
    models.build(name, models.UNSUPPORTED).save(path)
    base = tmp_path / "base"
    result = _export(path, "--name", "m", "--base", base, "--require-stream")  # else: a whole-sequence export
    _assert_bad_input(result, models.UNSUPPORTED[name][1], "Layer ", "cannot run step by step", base=base)


def test_missing_file(tmp_path):
    _assert_bad_input(_export(tmp_path / "nope.keras", "--name", "m", "--base", tmp_path / "b"),
                      "not found", base=tmp_path / "b")


def test_corrupt_keras_file(tmp_path):
    path = tmp_path / "bad.keras"
    path.write_bytes(b"this is not a zip archive")
    _assert_bad_input(_export(path, "--name", "m", "--base", tmp_path / "b"), "not a valid .keras file",
                      base=tmp_path / "b")


def test_truncated_keras_file(tmp_path):
    path = tmp_path / "cut.keras"
    models.build("lstm").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + data[-200:])  # still ends like a zip, body broken
    result = _export(path, "--name", "m", "--base", tmp_path / "b")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "user_factories.py").write_text(textwrap.dedent("""
        def not_a_model():
            return {"step": 1}

        def raises():
            raise RuntimeError("no weights here")

        def dense_only():
            import keras
            return keras.Sequential([keras.Input((None, 3)), keras.layers.Dense(2)])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_factories"
    sys.modules.pop("user_factories", None)


def test_factory_returning_non_model(tmp_path, factory_module):
    _assert_bad_input(_export(f"{factory_module}:not_a_model", "--name", "m", "--base", tmp_path / "b"),
                      "returned dict", "StepModel", base=tmp_path / "b")


def test_factory_that_raises(tmp_path, factory_module):
    _assert_bad_input(_export(f"{factory_module}:raises", "--name", "m", "--base", tmp_path / "b"),
                      "RuntimeError", "no weights here", base=tmp_path / "b")


def test_factory_module_missing(tmp_path):
    _assert_bad_input(_export("no_such_module_xyz:make", "--name", "m", "--base", tmp_path / "b"),
                      "no_such_module_xyz")


def test_non_rnn_model(tmp_path, factory_module):
    _assert_bad_input(_export(f"{factory_module}:dense_only", "--name", "m", "--base", tmp_path / "b",
                              "--require-stream"), "has no recurrent layer", base=tmp_path / "b")


def test_base_that_cannot_be_written(tmp_path):
    path = tmp_path / "m.keras"
    models.build("simple_rnn").save(path)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the base directory should be")
    _assert_bad_input(_export(path, "--name", "m", "--base", blocker / "base"), "Cannot write to", str(blocker))
    assert blocker.read_text().startswith("a file")


@pytest.mark.parametrize("name", ["../up", "a/b", "", "-x", "sp ace"])
def test_bad_model_name(tmp_path, name):
    path = tmp_path / "m.keras"
    models.build("simple_rnn").save(path)
    _assert_bad_input(_export(path, "--name", name, "--base", tmp_path / "b"), "not allowed",
                      base=tmp_path / "b")


def test_lambda_layer_refused_in_safe_mode(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(2, return_sequences=True),
                              keras.layers.Lambda(lambda x: x * 2.0)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    _assert_bad_input(_export(path, "--name", "m", "--base", tmp_path / "b"), "--unsafe",
                      base=tmp_path / "b")


def test_usage_error_is_exit_2():
    result = runner.invoke(app, ["export"])
    assert result.exit_code == 2


def test_version_must_be_positive(tmp_path):
    result = _export("x.keras", "--name", "m", "--base", tmp_path, "--version", "0")
    assert result.exit_code == 2


def test_json_error_shape(tmp_path):
    import json

    result = runner.invoke(app, ["export", str(tmp_path / "nope.keras"), "--name", "m", "--base",
                                 str(tmp_path / "b"), "--json"])
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and payload["exit_code"] == 2 and "not found" in payload["error"]


def test_check_and_skip_the_same_check(tmp_path):
    path = tmp_path / "m.keras"
    models.build("simple_rnn").save(path)
    _assert_bad_input(_export(path, "--name", "m", "--base", tmp_path / "b", "--check", "hvp", "--skip", "hvp"),
                      "both in --check and --skip", base=tmp_path / "b")


def test_half_a_tolerance_is_refused(tmp_path):
    path = tmp_path / "m.keras"
    models.build("simple_rnn").save(path)
    _assert_bad_input(_export(path, "--name", "m", "--base", tmp_path / "b", "--atol", "1e-3"),
                      "--atol/--rtol", base=tmp_path / "b")


def test_unknown_check_name_is_usage_error(tmp_path):
    assert _export("m.keras", "--name", "m", "--base", tmp_path, "--check", "nope").exit_code == 2


CUSTOM_LAYER = textwrap.dedent("""
    import keras

    @keras.saving.register_keras_serializable(package="mine")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2.0
""")


def test_unknown_custom_object_is_refused_with_how_to_opt_in(tmp_path, monkeypatch):
    """An unregistered class in a .keras file is not loaded; --import MODULE registers it (user code, on purpose)."""
    import keras

    (tmp_path / "mine_layers.py").write_text(CUSTOM_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import mine_layers

    model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(2, return_sequences=True),
                              mine_layers.Twice()])
    path = tmp_path / "custom.keras"
    model.save(path)
    keras.saving.get_custom_objects().pop("mine>Twice")  # as in a fresh process that never imported it
    sys.modules.pop("mine_layers")
    base = tmp_path / "b"
    _assert_bad_input(_export(path, "--name", "m", "--base", base), "custom class 'Twice'", "--import mine_layers", base=base)

    result = _export(path, "--name", "m", "--base", base, "--import", "mine_layers")
    # Loaded now, and Twice needs no opt-in: the probe finds it acts on each step alone.
    assert result.exit_code == 0, result.output
    assert (base / "m" / "1" / "saved_model.pb").is_file()
    keras.saving.get_custom_objects().pop("mine>Twice", None)
    sys.modules.pop("mine_layers", None)


def test_help_says_which_inputs_run_code():
    import re

    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    text = re.sub(r"[\s\u2500-\u257f]+", " ", result.output)  # rich's boxes and line breaks
    assert "RUNS that code" in text  # MODEL as package.module:function
    assert "runs code in the file" in text  # --unsafe
    assert "runs its code" in text  # --import


@pytest.mark.parametrize("construct", sorted(real_models.REFUSED_CONSTRUCTS))
def test_every_refused_construct_is_exit_2_with_a_json_error_and_no_traceback(tmp_path, construct):
    """Models seqexport cannot stream, streaming required: a message naming what and why, pointing to the
    factory route (without --require-stream they export whole-sequence: tests/exporter/test_whole_sequence.py)."""
    base = tmp_path / "b"
    result = runner.invoke(app, ["export", f"tests.exporter.real_models:{construct}", "--name", "m",
                                 "--base", str(base), "--json", "--require-stream"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and payload["exit_code"] == 2
    print(construct, "->", payload["error"])
    assert real_models.REFUSED_CONSTRUCTS[construct] in payload["error"]
    assert "factory" in payload["error"]
    assert not base.exists() or not any(base.iterdir())


STATIC_INPUTS_REFUSED = ("supports exports with one sequence input; this one also has 1 static input(s) (context). "
                         "Not supported yet for static inputs")


@pytest.mark.parametrize("target", ["triton"])  # triton-python takes them (test_triton_several_and_static.py)
def test_converting_static_inputs_for_triton_is_exit_2_naming_them(tmp_path, static_input_exports, target):
    export_dir = static_input_exports["static_initial_state"].path
    result = runner.invoke(app, ["convert", str(export_dir), "--to", target, "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    payload = json.loads(result.stdout)
    print(target, "->", payload["error"])
    assert payload["error"].startswith(f"Converting to {target} {STATIC_INPUTS_REFUSED}")
    assert "implicit state (`sequence_batching.state`) starts from zeros or a data file" in payload["error"]
    assert "`--targets triton-python`) takes them" in payload["error"]
    assert not (tmp_path / "out").exists()


SEQUENCE_INPUTS_REFUSED = ("supports exports with one sequence input; this one also has 1 other sequence input(s) "
                           "(features), [B, T, ...] beside `inputs`. Not supported yet for several sequence inputs")


@pytest.mark.parametrize("target", ["triton", "triton-python"])
def test_converting_sequence_inputs_for_triton_is_exit_2_naming_them(tmp_path, sequence_input_exports, target):
    export_dir = sequence_input_exports["tokens_features_and_static_into_gru"].path
    result = runner.invoke(app, ["convert", str(export_dir), "--to", target, "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error = json.loads(result.stdout)["error"]
    assert error.startswith(f"Converting to {target} {SEQUENCE_INPUTS_REFUSED}"), error
    assert not (tmp_path / "out").exists()


def test_export_targets_triton_refuse_sequence_inputs_before_any_work(tmp_path):
    base = tmp_path / "b"
    result = runner.invoke(app, ["export", "tests.exporter.real_models:two_sequence_inputs", "--name", "m", "--base",
                                 str(base), "--targets", "onnx,triton-python", "--json"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error = json.loads(result.stdout)["error"]
    assert error.startswith("--targets triton-python supports exports with one sequence input; this one also has "
                            "1 other sequence input(s) (b)"), error
    assert not base.exists() or not any(base.iterdir())


NO_KWARGS_LAYER = textwrap.dedent("""
    import keras

    @keras.saving.register_keras_serializable(package="nokw")
    class Scale(keras.layers.Layer):
        def __init__(self, factor):  # as keras.io's miniature GPT layers: no **kwargs
            super().__init__()
            self.factor = factor

        def call(self, x):
            return x * self.factor
""")


def test_a_file_keras_cannot_load_says_keras_s_cause_first_then_what_helps(tmp_path, monkeypatch):
    """keras.io's miniature GPT layers take no **kwargs: Keras itself cannot load the file. The message
    carries Keras's innermost cause and says what to change (re-saving would not help)."""
    import keras

    (tmp_path / "nokw_layers.py").write_text(NO_KWARGS_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import nokw_layers

    model = keras.Sequential([keras.Input((None, 3)), nokw_layers.Scale(2.0), keras.layers.GRU(2)])
    path = tmp_path / "nokw.keras"
    model.save(path)
    base = tmp_path / "b"
    result = _export(path, "--name", "m", "--base", base, "--import", "nokw_layers")
    _assert_bad_input(result, "Scale.__init__() got an unexpected keyword argument", "**kwargs", base=base)
    message = " ".join(result.output.split())
    assert message.index("unexpected keyword argument") < message.index("**kwargs")  # the cause first
    assert "Re-saving the model does not help" in message
    keras.saving.get_custom_objects().pop("nokw>Scale", None)
    sys.modules.pop("nokw_layers", None)


def test_a_legacy_h5_model_file_exports(tmp_path):
    """Keras 3 still loads the HDF5 files older TensorFlow saved (`model.save("m.h5")`)."""
    path = tmp_path / "old.h5"
    models.build("gru_reset_after").save(path)
    base = tmp_path / "b"
    result = runner.invoke(app, ["export", str(path), "--name", "m", "--base", str(base), "--skip", "hvp", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verify"]["passed"] is True
    _assert_bad_input(_export(tmp_path / "fake.h5", "--name", "n", "--base", base), "not found")
    (tmp_path / "fake.h5").write_bytes(b"not hdf5 at all")
    _assert_bad_input(_export(tmp_path / "fake.h5", "--name", "n", "--base", base), "not a valid HDF5 model file")


def test_an_internal_error_is_one_line_naming_the_phase_and_the_traceback_file(tmp_path, monkeypatch):
    """A bug of ours (here: the golden capture breaks) is never a traceback: exit 1, one line naming the
    phase and the file holding the traceback, a JSON error object under --json, nothing published."""
    import exporter.pipeline

    def broken_capture(*args, **kwargs):
        raise ZeroDivisionError("a bug in the capture")

    monkeypatch.setattr(exporter.pipeline, "capture", broken_capture)
    base = tmp_path / "b"
    path = tmp_path / "m.keras"
    models.build("lstm").save(path)
    result = runner.invoke(app, ["export", str(path), "--name", "m", "--base", str(base), "--json"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and payload["exit_code"] == 1 and payload["internal"] is True
    error = payload["error"]
    assert error.startswith("internal error while golden (ZeroDivisionError: a bug in the capture)"), error
    traceback_file = error.split("the traceback is in ")[1].split(";")[0]
    assert "broken_capture" in open(traceback_file).read()
    assert not (base / "m").exists() or not any((base / "m").iterdir())
