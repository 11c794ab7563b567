"""Models that cannot run step by step get a verified whole-sequence export (exporter/whole_sequence.py):
`serving_default` under the streaming keys, every check that applies, the streaming ones "not applicable"."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest
from exporter.artifact.specs import VOCABULARY_ASSETS_FORMAT_VERSION, ExportOptions
from exporter.cli.app import app
from exporter.keras_model import step_model_from_keras
from tests.exporter import official_examples, real_models
from tests.fixtures import export_then_verify_together

pytestmark = pytest.mark.slow

# Each official example that cannot stream, and the layer its probe names.
WHOLE = {
    "bidirectional_imdb": "(Bidirectional): it reads the sequence backwards",
    "addition_rnn": "(LSTM): it comes after 'lstm",
    "fcn_classifier": "(Conv1D): out[t] depends on in[t-1], in[t+1]",
    "transformer_classifier": "(MultiHeadAttention)",
    "conv_lstm_next_frame": "(Conv3D): out[t] depends on in[t-1], in[t+1]",
    "conv1d_forecaster": "(Conv1D): it does not keep the time axis",
    "feedback_forecaster": "(FeedBack) is subclassed and returns",
    "text_classifier": "takes raw text",
    "token_tagger": "takes string tokens ('tokens' [None, None], one per step)",
}


def _whole(name):
    return step_model_from_keras(official_examples.build(name), fall_back=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_then_verify_together(tmp_path_factory.mktemp("whole"), WHOLE,
                                       lambda name: ExportOptions(check_hvp=name in {"bidirectional_imdb", "fcn_classifier"}),
                                       builders=official_examples.build, fall_back=True)


@pytest.mark.parametrize("name", sorted(WHOLE))
def test_a_model_that_cannot_stream_exports_whole_sequence_and_verifies(exported, name):
    report = exported[name].report
    assert report.passed, report.failures
    print(f"{name}: {report.summary()}, export {exported[name].export_seconds:.1f} s")
    manifest = read_manifest(exported[name].path)
    assert WHOLE[name] in manifest.whole_sequence
    assert {s.name for s in manifest.signatures} == {"serving_default"} and not manifest.states
    # The streaming checks are listed, as not applicable and why; never as passed.
    inapplicable = [c for c in report.checks if c.not_applicable]
    assert {(c.check, c.signature) for c in inapplicable} == {("chunked", "stream"), ("chunked", "step")}
    assert all(not c.passed and manifest.whole_sequence in c.message for c in inapplicable)
    assert report.summary().endswith(", 2 not applicable")
    checks = {c.check for c in report.checks if not c.not_applicable}
    assert {"weights", "reload", "gradients", "source", "source gradients", "inputs", "batch independence"} <= checks


def _new_inputs(model, rng, steps):
    values = []
    for tensor in model.inputs:
        shape = [4, *(steps if d is None else d for d in tensor.shape[1:])]
        values.append(rng.integers(1, 20, size=shape).astype("int32") if "int" in str(tensor.dtype)
                      else rng.normal(size=shape).astype("float32"))
    return values


@pytest.mark.parametrize("name", sorted(WHOLE))
def test_the_reloaded_whole_sequence_export_matches_keras_on_new_data(exported, name):
    """Another draw, of another batch and length where the model's is free (the probes had 3 rows of 6 steps)."""
    model = official_examples.build(name)
    loaded = tf.saved_model.load(str(exported[name].path))
    if name == "feedback_forecaster":  # subclassed: no `inputs` to read the shapes from
        values = [np.random.default_rng(1).normal(size=(4, 11, 5)).astype("float32")]
    elif name == "text_classifier":
        values = [np.array([[b"great acting and a great cast"], [b"boring"], [b"the film made sense"], [b"zyzzyva"]])]
    elif name == "token_tagger":  # 11 tokens a row, one the vocabulary lacks
        values = [np.array([b"the plot was great and the cast made no sense zyzzyva".split()] * 4)]
    else:
        values = _new_inputs(model, np.random.default_rng(1), steps=11)
    got = loaded.signatures["serving_default"](inputs=tf.constant(values[0]))["outputs"].numpy()
    want = np.asarray(model(values[0]))
    worst = float(np.max(np.abs(got - want)))
    print(f"{name}: new data {list(values[0].shape)}, max abs vs Keras {worst:.2e}")
    assert got.shape == want.shape and worst <= 1e-5


def test_require_stream_refuses_what_would_export_whole_sequence(tmp_path):
    path = tmp_path / "bi.keras"
    official_examples.build("bidirectional_imdb").save(path)
    base = tmp_path / "b"
    result = CliRunner().invoke(app, ["export", str(path), "--name", "bi", "--base", str(base), "--require-stream",
                                      "--json"])
    assert result.exit_code == 2, result.output
    assert "(Bidirectional) cannot run step by step" in json.loads(result.stdout)["error"]
    assert not base.exists() or not any(base.iterdir())


def test_the_cli_says_first_that_an_export_is_whole_sequence_and_why(tmp_path):
    path = tmp_path / "fcn.keras"
    official_examples.build("fcn_classifier").save(path)
    result = CliRunner().invoke(app, ["export", str(path), "--name", "fcn", "--base", str(tmp_path / "b"),
                                      "--skip", "hvp"])
    assert result.exit_code == 0, result.output
    # As soon as it is known (the load: stderr, between the phases a log shows).
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert notes[0].startswith("note: whole-sequence export (serving_default only"), result.stderr
    assert "(Conv1D): out[t] depends on in[t-1], in[t+1]" in " ".join(result.stderr.split())
    assert result.stdout.startswith("verification (fresh process) of fcn, whole sequence only: all ")
    assert "n/a: a whole-sequence export" in " ".join(result.stdout.split())
    inspected = CliRunner().invoke(app, ["inspect", str(tmp_path / "b" / "fcn" / "1")], env={"COLUMNS": "200"})
    assert "whole sequence only" in inspected.stdout


UNTRACEABLE = '''
import keras
import tensorflow as tf


class Branchy(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        if tf.reduce_sum(x) > 0:  # a Python branch on a tensor's value
            return self.dense(x)
        return -self.dense(x)


def make():
    model = Branchy()
    model(tf.ones((2, 3, 4)))
    return model
'''


def test_a_model_that_cannot_be_traced_is_exit_2_saying_what_to_change(tmp_path, monkeypatch):
    (tmp_path / "branchy.py").write_text(UNTRACEABLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = tmp_path / "b"
    result = CliRunner().invoke(app, ["export", "branchy:make", "--name", "m", "--base", str(base), "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    print(error)
    # Keras itself traces `call` symbolically on the first call, fails, and records no input shape.
    assert "whose input shape Keras did not record" in error and "Python control flow on tensor values" in error
    assert not (base / "m").exists() or not any((base / "m").iterdir())


def test_a_subclassed_loop_over_a_known_length_keeps_that_length():
    """A `call` that loops over `x.shape[1]` in Python needs the length known: it keeps its first call's."""
    step_model = step_model_from_keras(real_models.subclassed(), fall_back=True)
    assert not step_model.streams and step_model.fixed_steps == 3


def test_a_text_model_is_served_on_strings_over_rest_and_grpc(exported):
    """The TF text-classification tutorial's model takes raw strings `[B, 1]`: plain JSON strings and
    `{"b64": ...}` over REST, `string_val` over gRPC, as TF Serving takes them; the vocabulary travels in
    the SavedModel. Each equals Keras on the same sentences."""
    import base64

    from serving.client import GrpcClient, RestClient
    from serving.server.server import ModelServer, ServerOptions

    manifest = read_manifest(exported["text_classifier"].path)
    assert manifest.signature("serving_default").inputs[0].dtype == "string"
    sentences = [b"the acting was great", b"a boring plot", b"zyzzyva"]
    want = np.asarray(official_examples.build("text_classifier")(np.array(sentences)[:, None]))
    base = exported["text_classifier"].path.parents[1]
    with ModelServer(ServerOptions(base=base, poll_seconds=0.2, names=("text_classifier",))) as server:
        server.wait_until_available("text_classifier", timeout=60)
        with GrpcClient(server.grpc_target) as grpc_client:
            by_grpc = grpc_client.predict("text_classifier", {"inputs": np.array(sentences, dtype=object)[:, None]})
        with RestClient(server.rest_url) as rest:
            plain = rest.request("POST", "/v1/models/text_classifier:predict",
                                 {"inputs": {"inputs": [[s.decode()] for s in sentences]}})
            b64 = rest.request("POST", "/v1/models/text_classifier:predict",
                               {"inputs": {"inputs": [[{"b64": base64.b64encode(s).decode()}] for s in sentences]}})
    for label, got in (("gRPC", by_grpc["outputs"]), ("REST", plain["outputs"]), ("REST b64", b64["outputs"])):
        worst = float(np.max(np.abs(np.asarray(got, np.float32) - want)))
        print(f"{label}: max abs vs Keras {worst:.2e}")
        assert worst <= 1e-5


def test_string_tokens_are_served_as_a_string_tensor_b_t(exported):
    """Tokens as strings, `[B, T]` DT_STRING (a `StringLookup` in the model): whole-sequence (the probes that
    prove a step are numbers), served over gRPC (`string_val`) and REST (plain and b64) as TF Serving takes
    them, each equal to Keras on the same tokens."""
    import base64

    from serving.client import GrpcClient, RestClient
    from serving.server.server import ModelServer, ServerOptions

    manifest = read_manifest(exported["token_tagger"].path)
    (inputs,) = manifest.signature("serving_default").inputs
    assert (inputs.dtype, inputs.shape) == ("string", (None, None))
    rows = [b"the acting was great".split(), b"boring film zyzzyva no".split()]
    want = np.asarray(official_examples.build("token_tagger")(np.array(rows)))
    base = exported["token_tagger"].path.parents[1]
    with ModelServer(ServerOptions(base=base, poll_seconds=0.2, names=("token_tagger",))) as server:
        server.wait_until_available("token_tagger", timeout=60)
        with GrpcClient(server.grpc_target) as grpc_client:
            by_grpc = grpc_client.predict("token_tagger", {"inputs": np.array(rows, dtype=object)})
        with RestClient(server.rest_url) as rest:
            plain = rest.request("POST", "/v1/models/token_tagger:predict",
                                 {"inputs": {"inputs": [[t.decode() for t in row] for row in rows]}})
            b64 = rest.request("POST", "/v1/models/token_tagger:predict",
                               {"inputs": {"inputs": [[{"b64": base64.b64encode(t).decode()} for t in row]
                                                      for row in rows]}})
    for label, got in (("gRPC", by_grpc["outputs"]), ("REST", plain["outputs"]), ("REST b64", b64["outputs"])):
        worst = float(np.max(np.abs(np.asarray(got, np.float32) - want)))
        print(f"tokens {label}: max abs vs Keras {worst:.2e}")
        assert np.shape(got) == want.shape and worst <= 1e-5


@pytest.mark.parametrize("name, layer", [("text_classifier", "text_vectorization"), ("token_tagger", "word_lookup")])
def test_the_vocabulary_is_an_asset_of_the_savedmodel(exported, name, layer):
    """The lookup table reads `assets/<layer>.vocabulary.txt` (TF Serving re-points it at load), not constants
    in the graph; the manifest, the check and `inspect` say which file; the user's layer keeps its list."""
    path = exported[name].path
    manifest = read_manifest(path)
    (asset,) = manifest.vocabularies
    assert manifest.format_version == VOCABULARY_ASSETS_FORMAT_VERSION
    model = official_examples.build(name)
    lookup = next(l for l in model.layers if hasattr(l, "get_vocabulary"))  # another build: another name
    words = [str(w) for w in lookup.get_vocabulary(include_special_tokens=False)]
    assert (asset.layer, asset.file, asset.words) == (layer, f"{layer}.vocabulary.txt", len(words))
    assert (path / "assets" / asset.file).read_text().splitlines() == words
    (row,) = [c for c in exported[name].report.checks if c.check == "vocabulary"]
    print(row.tensor, row.message)
    assert row.passed and row.tensor == f"assets/{asset.file}"
    inspected = CliRunner().invoke(app, ["inspect", str(path)], env={"COLUMNS": "200"})
    assert f"assets/{asset.file} ({len(words)} words" in inspected.stdout


def test_an_edited_vocabulary_asset_fails_verification(exported, tmp_path):
    """Two words of the asset swapped: the `vocabulary` row names the first line that differs, and the
    source check on real strings fails too (the served model maps them by that file)."""
    import shutil

    import exporter

    path = tmp_path / "1"
    shutil.copytree(exported["token_tagger"].path, path)
    (asset,) = read_manifest(path).vocabularies
    lines = (path / "assets" / asset.file).read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    (path / "assets" / asset.file).write_text("".join(f"{w}\n" for w in lines))
    report = exporter.verify(path)
    failures = {(c.check, c.tensor): c.message for c in report.failures}
    print(failures)
    assert f"line 1 is {lines[0]!r}, expected {lines[1]!r}" in failures[("vocabulary", f"assets/{asset.file}")]
    assert ("source", "outputs") in failures


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_a_bidirectional_whole_sequence_export_converts_with_parity(exported, tmp_path, target):
    """`serving_default` of the Bidirectional-LSTM text classifier converted (Keras's own ONNX export skips
    Bidirectional on TensorFlow) and checked on the goldens."""
    from exporter.convert.targets import convert_export

    report = convert_export(exported["bidirectional_imdb"].path, target, tmp_path / target)
    assert report.passed, report.failures
    assert [f.signature for f in report.files] == ["serving_default"]
    rows = [c for c in report.checks if c.signature == "serving_default" and c.max_abs is not None]
    print(target, [(c.tensor, c.max_abs) for c in rows])
    assert rows and all(c.max_abs <= c.atol for c in rows)
