"""Encoder-decoders stream their decoder: the encoder runs once, in `initial_state`, on the context inputs.

The models are built as keras.io's `lstm_seq2seq` and the NMT tutorial build theirs
(tests/exporter/official_examples.py); every export is verified in a fresh process, and the checks
are shown failing on exports whose encoder is dropped or whose states are swapped.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import exporter
from exporter.artifact.manifest import read_manifest
from exporter.artifact.specs import ExportOptions
from exporter.keras_model import step_model_from_keras
from exporter.pipeline import write_export
from exporter.verification.run import verify_many_in_fresh_process
from tests.exporter import official_examples as examples

pytestmark = pytest.mark.slow

NO_HVP = ExportOptions(check_hvp=False)
ENCODER_DECODERS = ("seq2seq_training", "gru_translator", "bidirectional_gru_translator",
                    "luong_attention_translator", "bahdanau_translator", "cross_attention_translator")
ATTENTION = {"luong_attention_translator": "attention", "bahdanau_translator": "additive_attention",
             "cross_attention_translator": "multi_head_attention"}


@pytest.fixture(scope="module")
def context_exports(tmp_path_factory):
    """Each encoder-decoder exported once (seq2seq with second derivatives, as by default), by name."""
    base = tmp_path_factory.mktemp("context")
    results = {}
    for name in ENCODER_DECODERS:
        options = ExportOptions() if name == "seq2seq_training" else NO_HVP
        results[name] = exporter.export(examples.build(name), name=name, base=base, options=options)
    return results


@pytest.mark.parametrize("name", ENCODER_DECODERS)
def test_an_encoder_decoder_streams_its_decoder_from_the_encoded_context(context_exports, name):
    result = context_exports[name]
    assert result.report.passed, result.report.failures
    manifest = read_manifest(result.path)
    (context,) = [i.name for i in manifest.context_inputs]  # lstm_seq2seq's inputs are unnamed: `keras_tensor...`
    assert manifest.streams and context.startswith("keras_tensor" if name == "seq2seq_training" else "source")
    inputs = {s.name: {t.name for t in s.inputs} for s in manifest.signatures}
    assert context in inputs["serving_default"] and context in inputs["initial_state"]
    assert context not in inputs["stream"] and context not in inputs["step"]  # the states carry it
    rows = {(c.check, c.signature, c.tensor) for c in result.report.checks}
    assert ("inputs", "serving_default", context) in rows  # the source changed alone moves the outputs
    assert {("chunked", "stream x2", "outputs"), ("chunked", "step x6", "outputs")} <= rows
    if manifest.context_inputs[0].dtype.startswith("float"):  # across the encoder/decoder boundary
        assert ("chunked gradients", "stream x2", f"d/{context}") in rows
    if name in ATTENTION:  # the encoder's outputs and their mask (a padded source) are carried as states
        layer = next(s.layer for s in manifest.states if s.name.endswith("_memory"))
        assert layer.startswith(ATTENTION[name])
        assert {f"{layer}_memory", f"{layer}_memory_mask"} <= {s.name for s in manifest.states}


def test_decoding_step_by_step_over_a_session_equals_the_keras_model(context_exports):
    """Encode once (`context=`), then feed one target token at a time: the Keras model's teacher-forced
    outputs, also after the session is saved and resumed."""
    from serving.client import SavedModelBackend
    from serving.session import StreamingSession

    model = examples.build("gru_translator")
    backend = SavedModelBackend(context_exports["gru_translator"].path)
    rng = np.random.default_rng(0)
    source = rng.integers(1, examples.SOURCE_VOCAB, size=(2, examples.SOURCE_STEPS)).astype(np.int32)
    source[1, 5:] = 0  # a padded source sentence
    target = rng.integers(0, examples.TARGET_VOCAB, size=(2, 7)).astype(np.int32)
    want = model([source, target]).numpy()
    session = StreamingSession(backend, batch_size=2, context={"source": source})
    got = [session.feed(target[:, :1])]
    session = StreamingSession.restore(session.save(), backend)
    got += [session.feed(target[:, t : t + 1]) for t in range(1, 7)]
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"context input\(s\) \['source'\] once per sequence"):
        StreamingSession(backend, batch_size=2)
    with pytest.raises(ValueError, match="needs the batch size 3 first"):
        StreamingSession(backend, batch_size=3, context={"source": source})


@pytest.fixture(scope="module")
def context_server(context_exports, tmp_path_factory):
    """`seqexport serve` over a copy of the GRU translator's export."""
    import shutil

    from serving.server.server import ModelServer, ServerOptions

    base = tmp_path_factory.mktemp("context-served")
    shutil.copytree(context_exports["gru_translator"].path, base / "translator" / "1")
    with ModelServer(ServerOptions(base=base, poll_seconds=0.2)) as running:
        running.wait_until_available("translator", timeout=60)
        yield running


@pytest.mark.parametrize("kind", ["grpc", "rest"])
def test_a_server_session_encodes_once_then_decodes_token_by_token(context_server, context_exports, kind):
    """Over TF Serving's gRPC and REST APIs: `initial_state` with the source, then `stream` one token per
    request with the state in the client, equals `serving_default` over the whole target."""
    from serving.client import GrpcClient, RestClient, SavedModelBackend
    from serving.session import StreamingSession

    rng = np.random.default_rng(1)
    source = rng.integers(0, examples.SOURCE_VOCAB, size=(3, examples.SOURCE_STEPS)).astype(np.int32)
    target = rng.integers(0, examples.TARGET_VOCAB, size=(3, 5)).astype(np.int32)
    want = SavedModelBackend(context_exports["gru_translator"].path).predict({"inputs": target, "source": source})
    client = GrpcClient(context_server.grpc_target) if kind == "grpc" else RestClient(context_server.rest_url)
    with client:
        session = StreamingSession(client.backend("translator"), batch_size=3, context={"source": source})
        got = np.concatenate([session.feed(target[:, t : t + 1]) for t in range(5)], axis=1)
    np.testing.assert_allclose(got, want["outputs"], rtol=1e-5, atol=1e-5)


def test_initial_state_of_another_batch_than_its_context_is_a_clear_error(context_exports):
    loaded = tf.saved_model.load(str(context_exports["gru_translator"].path))
    source = tf.ones((2, examples.SOURCE_STEPS), tf.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="input source must have batch_size rows"):
        loaded.signatures["initial_state"](batch_size=tf.constant(3), source=source)


def test_exporting_again_from_the_saved_model_keeps_the_context(context_exports, tmp_path):
    """The SavedModel re-exported (its `step` and `initial_state`) verifies against its own `serving_default`."""
    result = exporter.export(str(context_exports["gru_translator"].path), name="again", base=tmp_path,
                             options=NO_HVP)
    assert result.report.passed, result.report.failures
    assert [i.name for i in read_manifest(result.path).context_inputs] == ["source"]


@pytest.mark.parametrize("name", ["gru_translator", "bidirectional_gru_translator", "luong_attention_translator"])
def test_onnx_converts_the_encoder_beside_the_step_model(context_exports, tmp_path, name):
    """`initial_state.onnx` encodes the context (its parity row on the golden), and the step and stream
    models driven from it match `serving_default` (outputs, states, the attention memory included; past
    a row's `lengths` the step driver feeds padding, so the decoder GRU of the Bidirectional translator,
    which Keras does not mask as it has an `initial_state=`, steps on as in the export)."""
    from exporter.convert.targets import convert_export

    report = convert_export(context_exports[name].path, "onnx", tmp_path / "onnx")
    assert report.passed, report.failures
    assert {f.path for f in report.files} == {"initial_state.onnx", "step.onnx", "stream.onnx"}
    rows = {(c.signature.split(" x")[0], c.tensor) for c in report.checks}
    assert ("initial_state", next(s.name for s in read_manifest(context_exports[name].path).states)) in rows
    assert any(signature == "step driver" and tensor.startswith("outputs") for signature, tensor in rows)


def test_litert_refuses_a_context_export_naming_it(context_exports, tmp_path):
    from exporter.convert.targets import convert_export

    with pytest.raises(exporter.BadInput, match=r"context inputs yet \(source: an encoder's inputs.*--to onnx"):
        convert_export(context_exports["gru_translator"].path, "tflite", tmp_path / "tflite")


def test_triton_python_backend_encodes_the_context_on_start(context_exports, tmp_path):
    """`convert --to triton --backend python`: the START request carries the source, `initial_state.onnx` encodes
    it into the sequence's first states (the attention memory and its mask included); `check triton` streams
    every golden row in 1, 2 and T chunks over gRPC and HTTP on the real server."""
    import json

    from typer.testing import CliRunner

    from exporter.cli.app import app
    from exporter.convert.targets import convert_export

    for name in ("gru_translator", "luong_attention_translator"):
        report = convert_export(context_exports[name].path, "triton-python", tmp_path / "repo")
        assert report.passed, report.failures
    result = CliRunner().invoke(app, ["check", "triton", str(tmp_path / "repo"), "--json"])
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.stdout)["checks"] if r["max_abs"] is not None]
    print(f"{len(rows)} rows, worst {max(r['max_abs'] for r in rows):.1e}")
    tensors = {r["tensor"] for r in rows if r["signature"].startswith("luong")}
    assert "outputs" in tensors and any(t.endswith("_memory") for t in tensors), tensors


def test_context_mixed_into_every_step_falls_back_to_a_whole_sequence_export(tmp_path):
    result = exporter.export(examples.build("context_every_step"), name="mixed", base=tmp_path, options=NO_HVP)
    assert result.report.passed, result.report.failures
    manifest = read_manifest(result.path)
    assert not manifest.streams and not manifest.context_inputs
    assert "concatenate" in manifest.whole_sequence


def _dropping_the_encoder(step_model):
    """A realistic bug: the decoder starts from the states the golden probe's source sets, whatever
    source it is given (the encoder dropped from the graph). Right on that probe, wrong on any other."""
    from exporter.golden import probe_inputs

    probe = probe_inputs(step_model, NO_HVP)
    frozen = step_model.initial_states_fn(tuple(tf.constant(probe[i.name]) for i in step_model.initial_inputs))
    return dataclasses.replace(step_model, initial_states_fn=lambda values: frozen)


def _swapping_the_encoder_states(step_model):
    """A realistic bug: the encoder's `h` and `c` given to the decoder the other way round."""
    encode = step_model.initial_states_fn
    return dataclasses.replace(step_model, initial_states_fn=lambda values: tuple(reversed(encode(values))))


def _dropping_the_memory(step_model):
    """A realistic bug: the attention reads zeros instead of the encoder's outputs."""
    encode, names = step_model.initial_states_fn, [s.name for s in step_model.states]
    return dataclasses.replace(step_model, initial_states_fn=lambda values: tuple(
        tf.zeros_like(s) if n.endswith("_memory") else s for n, s in zip(names, encode(values))))


def test_checks_fail_when_the_memory_is_dropped_or_its_mask_ignored(tmp_path, monkeypatch):
    from exporter import keras_graph

    model = examples.build("luong_attention_translator")
    dirs = [tmp_path / "memory_dropped", tmp_path / "mask_ignored"]
    write_export(_dropping_the_memory(step_model_from_keras(model)), dirs[0], name="m", source={"kind": "test"},
                 options=NO_HVP)
    with monkeypatch.context() as patched:  # each step's memory without its Keras mask: padding attended to
        patched.setattr(keras_graph, "set_keras_mask", lambda tensor, mask: None)
        write_export(step_model_from_keras(model), dirs[1], name="i", source={"kind": "test"}, options=NO_HVP)
    for report in verify_many_in_fresh_process(dirs):
        failing = {c.check for c in report.checks if not c.passed and not c.not_applicable}
        print(report.summary(), sorted(failing))
        assert {"source", "source gradients", "inputs"} <= failing


def test_checks_fail_when_the_encoder_is_dropped_or_its_states_swapped(tmp_path):
    step_model = step_model_from_keras(examples.build("seq2seq_training"))
    assert [s.name[-2:] for s in step_model.states] == ["_h", "_c"]  # the decoder LSTM's
    dirs = [tmp_path / "dropped", tmp_path / "swapped"]
    write_export(_dropping_the_encoder(step_model), dirs[0], name="d", source={"kind": "test"}, options=NO_HVP)
    write_export(_swapping_the_encoder_states(step_model), dirs[1], name="s", source={"kind": "test"},
                 options=NO_HVP)
    dropped, swapped = verify_many_in_fresh_process(dirs)
    source = step_model.context_inputs[0].name  # `keras_tensor...`: Keras names unnamed inputs
    failing = {(c.check, c.tensor) for c in dropped.checks if not c.passed and not c.not_applicable}
    print(dropped.summary(), sorted(failing))
    # A changed source shows it, and the gradients w.r.t. the source and the encoder's weights are lost.
    assert {("inputs", source), ("source gradients", f"d/{source}")} <= failing
    assert {check for check, _ in failing} == {"inputs", "source gradients"}, failing
    failing = {c.check for c in swapped.checks if not c.passed and not c.not_applicable}
    print(swapped.summary(), sorted(failing))
    assert {"source", "source gradients"} <= failing


def test_inspect_shows_the_context_inputs(context_exports):
    from typer.testing import CliRunner

    from exporter.cli.app import app

    result = CliRunner().invoke(app, ["inspect", str(context_exports["gru_translator"].path)])
    assert result.exit_code == 0, result.output
    assert "context inputs (initial_state)" in result.output
    assert f"source [{examples.SOURCE_STEPS}] int32" in result.output
