"""`generate` (exporter/generate.py): exported from the models users generate with, verified in a fresh
process against the source model's own loop, refused with a reason where the output cannot feed the input."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest
from exporter.artifact.specs import GENERATE_FORMAT_VERSION, ExportOptions, Feedback, Scores
from exporter.cli.app import app
from exporter.keras_model import step_model_from_keras
from exporter.verification.run import verify_in_fresh_process
from tests.exporter import official_examples
from tests.fixtures.generate import GENERATE_MODELS, MAX_NEW_TOKENS

runner = CliRunner()


def _rows(report, check="generate"):
    return [c for c in report.checks if c.check == check]


@pytest.mark.parametrize("name", GENERATE_MODELS)
def test_generate_verifies_against_the_source_models_greedy_loop(generate_exports, name):
    report = generate_exports[name].report
    assert report.passed, report.summary()
    rows = _rows(report)
    for row in rows:  # the measured errors, for the record
        print(f"{name}: {row.signature} {row.tensor}: max abs {row.max_abs} (atol {row.atol}, rtol {row.rtol})")
    greedy = [r for r in rows if r.signature.startswith("greedy vs source")]
    assert [r.signature.split("source ")[1] for r in greedy] == ["B=1 P=1", "B=2 P=4", "B=3 P=7"]
    if name != "feedback_lstm":  # ids: id for id
        assert all(r.atol == 0 and r.rtol == 0 and r.max_abs == 0 for r in greedy)
    manifest = read_manifest(generate_exports[name].path)
    states = {r.tensor for r in rows if r.signature.startswith("states vs stream")}
    assert states == {s.name for s in manifest.states}
    assert any(r.signature.startswith("seeded twice") for r in rows)
    assert any(r.signature.startswith("seeded vs step loop") for r in rows)
    # The seeded, sampled call captured at export equals the reloaded one (reproducible across reloads).
    reload_rows = [c for c in report.checks if c.check == "reload" and c.signature == "generate"]
    assert reload_rows and all(r.passed for r in reload_rows)


@pytest.mark.parametrize("name, feedback, scores, vocab", [
    ("character_lstm_ids", Feedback.IDS, Scores.PROBABILITIES, 15),
    ("word_gru_logits", Feedback.IDS, Scores.LOGITS, 30),
    ("feedback_lstm", Feedback.FEATURES, None, None),
])
def test_manifest_records_what_generate_feeds_back_and_inspect_shows_it(generate_exports, name, feedback, scores,
                                                                       vocab):
    path = generate_exports[name].path
    manifest = read_manifest(path)
    assert (manifest.generate.feedback, manifest.generate.scores, manifest.generate.vocab) == (feedback, scores, vocab)
    assert manifest.generate.max_new_tokens == MAX_NEW_TOKENS and manifest.format_version == GENERATE_FORMAT_VERSION
    result = runner.invoke(app, ["inspect", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"max_new_tokens <= {MAX_NEW_TOKENS}" in result.output and "generate" in result.output


def _generate(path):
    return tf.saved_model.load(str(path)).signatures["generate"]


@pytest.mark.parametrize("inputs, named", [
    (dict(max_new_tokens=MAX_NEW_TOKENS + 1), "input max_new_tokens must be at most 32"),
    (dict(max_new_tokens=-1), "input max_new_tokens must be >= 0"),
    (dict(temperature=-0.5), "input temperature must be >= 0"),
    (dict(top_k=31), "input top_k must be at most the vocabulary, 30"),
    (dict(prompt=np.full((1, 2), 30, np.int32)), "input prompt: ids must be below the vocabulary, 30"),
])
def test_bad_inputs_fail_the_call_naming_the_input(generate_exports, inputs, named):
    generate = _generate(generate_exports["word_gru_logits"].path)
    feed = dict(prompt=np.ones((2, 3), np.int32), max_new_tokens=4, temperature=0.0, top_k=0, seed=0) | inputs
    dtypes = dict(prompt=tf.int32, max_new_tokens=tf.int32, temperature=tf.float32, top_k=tf.int32, seed=tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match=named):
        generate(**{k: tf.constant(v, dtypes[k]) for k, v in feed.items()})


def test_zero_new_tokens_returns_the_prompts_states_and_no_ids(generate_exports):
    path = generate_exports["word_gru_logits"].path
    loaded = tf.saved_model.load(str(path))
    prompt = tf.constant([[1, 2, 3], [4, 5, 6]], tf.int32)
    result = loaded.signatures["generate"](prompt=prompt, max_new_tokens=tf.constant(0), temperature=tf.constant(0.0),
                                           top_k=tf.constant(0), seed=tf.constant(0, tf.int64))
    assert result["tokens"].shape == (2, 0)
    initial = loaded.signatures["initial_state"](batch_size=tf.constant(2))
    (state,) = [s.name for s in read_manifest(path).states]  # the GRU's h, named as Keras named the layer
    want = loaded.signatures["stream"](inputs=prompt, **initial)[state].numpy()
    error = float(np.max(np.abs(result[state].numpy() - want)))
    print(f"{state} after the prompt: max abs error {error} (atol 1e-5)")
    assert error <= 1e-5


def test_sampling_depends_on_the_seed_and_temperature_and_top_k_one_is_greedy(generate_exports):
    generate = _generate(generate_exports["word_gru_logits"].path)
    prompt = tf.constant(np.arange(1, 9, dtype=np.int32).reshape(2, 4))

    def run(temperature, top_k, seed):
        return generate(prompt=prompt, max_new_tokens=tf.constant(16), temperature=tf.constant(temperature),
                        top_k=tf.constant(top_k), seed=tf.constant(seed, tf.int64))["tokens"].numpy()

    greedy = run(0.0, 0, 0)
    assert not np.array_equal(run(5.0, 0, 1), run(5.0, 0, 2))
    np.testing.assert_array_equal(run(5.0, 1, 3), greedy)  # top_k=1 keeps the argmax alone


def test_an_id_model_whose_output_does_not_range_over_its_ids_gets_no_generate():
    step_model = step_model_from_keras(official_examples.build("mismatched_vocab_gru"))
    assert step_model.generation is None
    assert "has [40] float32 values per step but Embedding" in step_model.generation_refusal
    assert "reads 30 ids" in step_model.generation_refusal


def test_generate_on_request_exits_2_saying_why(tmp_path):
    model = official_examples.build("mismatched_vocab_gru")
    path = tmp_path / "mismatched.keras"
    model.save(path)
    result = runner.invoke(app, ["export", str(path), "--name", "m", "--base", str(tmp_path / "base"), "--generate"],
                           terminal_width=400)
    assert result.exit_code == 2, result.output
    assert "--generate" in result.output and "reads 30 ids" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "base" / "m" / "1").exists()


def test_a_float_model_gets_generate_only_on_request():
    from exporter.generate import plan

    step_model = step_model_from_keras(official_examples.build("feedback_lstm"))
    assert plan(step_model, requested=False, max_new_tokens=8) is None
    assert plan(step_model, requested=True, max_new_tokens=8).feedback is Feedback.FEATURES


@pytest.mark.slow
def test_a_generated_padding_id_is_masked_as_keras_masks_it(tmp_path):
    """`Embedding(mask_zero=True)` and a model whose likeliest next id is 0: Keras's loop masks each generated
    0 (the state stays, the output repeats), and so does `step` in the `generate` loop: the greedy ids, the
    0s included, and the states after them match the source's."""
    from exporter.pipeline import write_export

    keras_model = official_examples.build("word_gru_logits")
    inputs = tf.keras.Input(shape=(None,), dtype="int32")
    masked = tf.keras.layers.Embedding(30, 8, mask_zero=True)
    x = masked(inputs)
    for layer in keras_model.layers[2:]:
        x = layer(x)
    model = tf.keras.Model(inputs, x)
    masked.set_weights(keras_model.layers[1].get_weights())
    bias = model.layers[-1].bias
    bias.assign(tf.tensor_scatter_nd_update(bias, [[0]], [1.5]))  # 0, the padding id, soon leads the logits
    write_export(step_model_from_keras(model), tmp_path / "masked", name="masked", source={"kind": "test"},
                 options=ExportOptions(check_hvp=False, max_new_tokens=8))
    report = verify_in_fresh_process(tmp_path / "masked")
    from exporter.artifact.golden_io import load
    from exporter.artifact.paths import golden_path

    golden = load(golden_path(tmp_path / "masked"))
    wanted = np.concatenate([v.ravel() for k, v in golden.items() if k.startswith("generate/case/") and
                             k.endswith("/want")])
    print(f"{report.summary()}; source's greedy ids: {np.count_nonzero(wanted == 0)} of {wanted.size} are 0")
    assert report.passed, report.failures
    assert 0 < np.count_nonzero(wanted == 0) < wanted.size  # masked steps and unmasked ones, both checked
    assert any(r.check == "generate" and r.signature.startswith("greedy vs source") for r in report.checks)


def test_the_check_fails_on_an_export_whose_generate_feeds_back_the_wrong_id(tmp_path, monkeypatch):
    """A `generate` that feeds back the next id instead of the chosen one: its own reload golden agrees with
    it, the source model's loop and `stream` over what it generated do not."""
    import exporter.generate as generate
    from exporter.pipeline import write_export

    fed_back = generate._fed_back
    monkeypatch.setattr(generate, "_fed_back", lambda chosen, model: fed_back(
        (chosen + 1) % 30 if chosen.dtype == tf.int32 and len(chosen.shape) == 1 else chosen, model))
    step_model = step_model_from_keras(official_examples.build("word_gru_logits"))
    write_export(step_model, tmp_path / "broken", name="broken", source={"kind": "test"},
                 options=ExportOptions(check_hvp=False, max_new_tokens=16))
    report = verify_in_fresh_process(tmp_path / "broken")
    failures = {(r.signature.split(" B=")[0], r.tensor) for r in report.failures}
    print(report.summary())
    assert ("greedy vs source", "tokens") in failures
    state = read_manifest(tmp_path / "broken").states[0].name
    assert ("states vs stream", state) in failures
    assert all(r.check == "generate" for r in report.failures)


@pytest.mark.slow
def test_the_check_fails_on_an_export_whose_generate_from_ignores_the_states_it_is_given(tmp_path, monkeypatch):
    """A `generate_from` that starts from zeros whatever states it is given: `generate` itself is right, the rows
    that continue a streamed prompt are not."""
    import exporter.generate as generate
    from exporter.pipeline import write_export

    monkeypatch.setattr(generate, "given_states", lambda model, feed: tuple(tf.zeros_like(feed[s.name])
                                                                              for s in model.states))
    step_model = step_model_from_keras(official_examples.build("word_gru_logits"))
    write_export(step_model, tmp_path / "broken", name="broken", source={"kind": "test"},
                 options=ExportOptions(check_hvp=False, max_new_tokens=16))
    report = verify_in_fresh_process(tmp_path / "broken")
    print(report.summary())
    assert report.failures and all(r.signature.startswith("continued after") for r in report.failures), \
        report.failures


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_runtimes_run_the_generate_loop_over_their_step_model(generate_exports, tmp_path, target):
    """The converted step model driven as `generate` drives `step` (the prompt, then the argmax fed back) makes the
    source model's greedy ids exactly; with one wanted id changed in the goldens, the row fails."""
    import shutil

    from exporter.artifact import golden_io
    from exporter.artifact.paths import golden_path
    from exporter.convert.targets import convert_export

    path = generate_exports["word_gru_logits"].path
    report = convert_export(path, target, tmp_path / "ok")
    rows = [c for c in report.checks if c.signature.startswith("generate driver")]
    print(report.summary())
    assert report.passed and len(rows) == 3 and all(c.max_abs == 0 for c in rows), report.failures
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    golden = golden_io.load(golden_path(broken))
    golden["generate/case/1/want"][0, -1] = (golden["generate/case/1/want"][0, -1] + 1) % 30
    golden_io.save(golden, golden_path(broken))
    failing = [c for c in convert_export(broken, target, tmp_path / "bad").checks if not c.passed]
    assert [c.signature for c in failing] == ["generate driver B=2 P=4"], failing


def test_triton_python_backend_answers_a_generate_request_with_the_greedy_ids(generate_exports, tmp_path):
    """`convert --to triton --backend python` of an id model (and a features one): a request carrying
    `max_new_tokens` runs the prompt then N steps fed back; `check triton` on the real server gets the source
    model's greedy ids exactly over gRPC and HTTP (the forecaster's features within tolerance). A prompt sent in
    two requests of one sequence generates the same ids (the state goes on); one wanted id changed fails."""
    import shutil

    from tritonclient.utils import InferenceServerException

    from exporter.artifact import golden_io
    from exporter.artifact.paths import golden_path
    from exporter.convert import triton
    from exporter.convert.targets import convert_export
    from exporter.convert.triton_check import check_repository
    from exporter.convert.triton_server import SequenceClient, TritonServer

    repo = tmp_path / "repo"
    for name in ("word_gru_logits", "feedback_lstm"):
        report = convert_export(generate_exports[name].path, "triton-python", repo)
        assert report.passed, report.failures
        assert any("generate: a request with max_new_tokens" in n for n in report.notes)
    config = triton.read_config(repo / "word_gru_logits" / triton.CONFIG_FILE)
    assert [(t.name, list(t.dims), t.optional) for t in config.input] == [
        ("inputs", [-1], False), ("max_new_tokens", [1], True)]
    assert config.output[-1].name == "tokens" and list(config.output[-1].dims) == [-1]
    with TritonServer(repo) as server:
        report = check_repository(repo, server=server)
        rows = [c for c in report.checks if " generate " in c.signature]
        for row in rows:
            print(row.signature, row.tensor, row.max_abs, row.atol)
        assert report.passed, report.failures
        assert len(rows) == 12  # 3 greedy cases x gRPC, HTTP x 2 models
        assert all(c.max_abs == 0 and c.atol == 0 for c in rows if c.tensor == "tokens")
        golden = golden_io.load(golden_path(generate_exports["word_gru_logits"].path))
        prompt, want = golden["generate/case/2/in/prompt"][:1], golden["generate/case/2/want"][:1]
        count = np.array([[want.shape[1]]], np.int32)
        with SequenceClient("grpc", server.grpc_url) as client:
            client.infer_tensors("word_gru_logits", {"inputs": prompt[:, :3]}, sequence_id=7, sequence_start=True)
            rest = client.infer_tensors("word_gru_logits", {"inputs": prompt[:, 3:], "max_new_tokens": count},
                                        sequence_id=7, sequence_end=True)
            assert np.array_equal(rest["tokens"], want), (rest["tokens"], want)
            with pytest.raises(InferenceServerException, match="the export generates 0 to 32 new steps"):
                client.infer_tensors("word_gru_logits", {"inputs": prompt, "max_new_tokens": count * 100},
                                     sequence_id=8, sequence_start=True, sequence_end=True)
        broken = tmp_path / "broken"
        shutil.copytree(generate_exports["word_gru_logits"].path, broken)
        golden["generate/case/1/want"][0, -1] = (golden["generate/case/1/want"][0, -1] + 1) % 30
        golden_io.save(golden, golden_path(broken))
        failing = check_repository(repo, server=server, export=broken, names=("word_gru_logits",)).failures
    assert [(c.signature, c.tensor) for c in failing] == [
        ("word_gru_logits grpc generate B=2 P=4", "tokens"), ("word_gru_logits http generate B=2 P=4", "tokens")]
