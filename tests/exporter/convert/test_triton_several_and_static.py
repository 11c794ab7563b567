"""Triton repositories of exports with several outputs or static inputs.

Several outputs: every output is a config output by name (dims, data type), `model.py` returns each,
and the real `tritonserver` (nvidia-pytriton's, Python backend) streams the goldens with every output
compared by name. Static inputs (Python backend): an input of every request, and each sequence's state
starts from the export's `initial_state` of them; the onnxruntime backend refuses them
(tests/exporter/cli/test_errors.py).

Tolerance of every compared row: the export's own (atol 1e-5, rtol 1e-4); the worst error is printed.
One repository holds the three several-output and two static-input exports for the Python backend and
one several-output export for the ONNX Runtime backend, so one server start checks them all.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as pb
from typer.testing import CliRunner

from exporter.artifact.errors import BadInput
from exporter.cli.app import app
from exporter.convert import triton
from exporter.convert.graph import load_export
from exporter.convert.runtimes import OrtModel
from exporter.convert.targets import convert_export
from tests.exporter.convert.common import describe

SEVERAL = ("two_heads_on_gru", "head_and_lstm_states", "dict_of_outputs")
STATIC = ("static_initial_state", "static_features_per_step")
NAMES = SEVERAL + STATIC
ORT_NAME = "two_heads_on_gru_ort"  # the onnxruntime-backend model of two_heads_on_gru in the same repository


@pytest.fixture(scope="module")
def exports(several_output_exports, static_input_exports):
    return {name: export.path for name, export in {**several_output_exports, **static_input_exports}.items()}


@pytest.fixture(scope="module")
def loaded(exports):
    return {name: load_export(exports[name]) for name in NAMES}


@pytest.fixture(scope="module")
def repo(exports, loaded, tmp_path_factory):
    """`(repo, {model: report})`: the Python-backend models of NAMES, and `ORT_NAME`."""
    repo = tmp_path_factory.mktemp("triton_several")
    reports = {name: convert_export(exports[name], "triton-python", repo, loaded=loaded[name]) for name in NAMES}
    reports[ORT_NAME] = convert_export(exports["two_heads_on_gru"], "triton", repo,
                                       loaded=loaded["two_heads_on_gru"], triton_name=ORT_NAME)
    return repo, reports


@pytest.fixture(scope="module")
def server(repo):
    from exporter.convert.triton_server import TritonServer

    with TritonServer(repo[0]) as running:
        print(f"tritonserver pid {running.pid} live in {running.start_seconds:.2f} s")
        yield running


def _keys(manifest) -> set[str]:
    return {key for key, _, _ in manifest.output_keys()} | {s.name for s in manifest.states}


@pytest.mark.parametrize("name", SEVERAL)
def test_python_config_lists_every_output_by_name(repo, loaded, name):
    folder, reports = repo
    print(describe(reports[name]))
    assert reports[name].passed, reports[name].failures
    manifest = loaded[name].manifest
    config = triton.read_config(folder / name / "config.pbtxt")
    step = OrtModel.load(folder / name / "1" / triton.PYTHON_STEP_FILE)
    assert config == triton.python_model_config(name, step)  # built from the protos, parses back the same
    outputs = sorted(manifest.outputs, key=lambda o: o.name)
    states = sorted(manifest.states, key=lambda s: s.name)
    assert [(t.name, list(t.dims), t.data_type) for t in config.output] == (
        [(o.name, [-1, *o.shape], pb.DataType.Value(triton.data_type(o.dtype))) for o in outputs]
        + [(s.name, list(s.shape), pb.DataType.Value(triton.data_type(s.dtype))) for s in states])
    spec = triton.python_spec(config)
    assert [(o["name"], o["step_output"], o["shape"]) for o in spec["outputs"]] == [
        (o.name, o.name, list(o.shape)) for o in outputs]


@pytest.mark.parametrize("name", STATIC)
def test_python_config_takes_every_static_input(repo, loaded, name):
    folder, reports = repo
    print(describe(reports[name]))
    assert reports[name].passed, reports[name].failures
    assert {f.path for f in reports[name].files} >= {f"{name}/1/{triton.PYTHON_INITIAL_FILE}",
                                                      f"{name}/1/{triton.PYTHON_STEP_FILE}"}
    assert {c.signature for c in reports[name].checks} >= {"initial_state", "step", "step driver x1"}
    manifest = loaded[name].manifest
    config = triton.read_config(folder / name / "config.pbtxt")
    step = OrtModel.load(folder / name / "1" / triton.PYTHON_STEP_FILE)
    initial = OrtModel.load(folder / name / "1" / triton.PYTHON_INITIAL_FILE)
    assert config == triton.python_model_config(name, step, initial=initial)
    assert [(t.name, list(t.dims)) for t in config.input] == [("inputs", [-1, 3])] + [
        (i.name, list(i.shape)) for i in manifest.static_inputs]
    spec = triton.python_spec(config)
    assert spec["statics"] == [i.name for i in manifest.static_inputs]
    assert spec["initial_model"] == triton.PYTHON_INITIAL_FILE
    assert sorted(state for _, state in spec["initial_outputs"]) == sorted(s.name for s in manifest.states)
    with pytest.raises(BadInput, match="needs the export's `initial_state` model"):
        triton.python_model_config(name, step)


def test_onnxruntime_config_lists_every_output_and_agrees_with_the_model(repo, loaded):
    folder, reports = repo
    print(describe(reports[ORT_NAME]))
    assert reports[ORT_NAME].passed, reports[ORT_NAME].failures
    config = triton.read_config(folder / ORT_NAME / "config.pbtxt")
    model = OrtModel.load(folder / ORT_NAME / "1" / triton.MODEL_FILE)
    assert config == triton.model_config(ORT_NAME, model)
    assert triton.check_config(config, model) == []
    manifest = loaded["two_heads_on_gru"].manifest
    assert [(t.name, list(t.dims)) for t in config.output] == [(o.name, list(o.shape)) for o in manifest.outputs]
    assert {s.input_name for s in config.sequence_batching.state} == {s.name for s in manifest.states}
    # Teeth: a config that forgets an output, or names a state output as an output, disagrees with the model.
    dropped = triton.model_config(ORT_NAME, model)
    del dropped.output[1]
    assert triton.check_config(dropped, model) == ["model output 'right' is neither a config output nor a state"]


def test_every_output_on_the_real_server_equals_golden(repo, server, loaded):
    from exporter.convert.triton_check import check_repository

    report = check_repository(repo[0], server=server)
    for row in report.checks:
        print(row.signature, row.tensor, row.max_abs, row.message)
    assert report.passed, report.failures
    for name in NAMES:
        steps = loaded[name].golden["serving_default/in/inputs"].shape[1]
        streamed = {f"{name} {p} x{n}" for p in ("grpc", "http") for n in sorted({1, 2, steps})}
        for signature in streamed:
            assert {c.tensor for c in report.checks if c.signature == signature} == _keys(loaded[name].manifest), (
                signature)
    assert {c.tensor for c in report.checks if c.signature.startswith(ORT_NAME)} == {"config.pbtxt",
                                                                                   "config vs model.onnx"}
    worst = max(c.max_abs for c in report.checks if c.max_abs is not None)
    print(f"worst streamed row: max abs {worst:.3g}")
    assert worst <= 1e-5


def test_the_check_fails_on_a_swapped_or_missing_output(repo, server, loaded):
    """The server's real responses, with the two outputs swapped, or one dropped: exactly those rows fail."""
    from exporter.convert.triton_check import golden_rows, served_outputs, stream_sequences
    from exporter.convert.triton_server import SequenceClient

    loaded_export = loaded["two_heads_on_gru"]
    manifest, golden = loaded_export.manifest, loaded_export.golden
    tolerance = manifest.options.tolerance
    with SequenceClient("grpc", server.grpc_url) as client:
        outputs, states = stream_sequences(client, "two_heads_on_gru", golden["serving_default/in/inputs"], None,
                                           chunks=2, first_id=7000, outputs=served_outputs(manifest))
    assert sorted(outputs) == ["left", "right"]
    good = golden_rows("good", outputs, states, manifest, golden, tolerance)
    assert all(r.passed for r in good), [r for r in good if not r.passed]
    swapped = golden_rows("swapped", {"left": outputs["right"], "right": outputs["left"]}, states, manifest, golden,
                          tolerance)
    print("swapped:", [(r.tensor, r.max_abs) for r in swapped])
    assert {r.tensor for r in swapped if not r.passed} == {"left", "right"}
    missing = golden_rows("missing", {"left": outputs["left"]}, states, manifest, golden, tolerance)
    assert [(r.tensor, r.passed) for r in missing if not r.passed] == [("right", False)]
    assert "returned no output 'right'" in next(r.message for r in missing if r.tensor == "right")


def test_static_inputs_go_with_every_request_and_set_the_start_state(repo, server, loaded):
    """Another row's static values, on the server's real responses, must fail: for `static_initial_state`
    they only set the state START gives (`initial_state`), so the check sees whether that state is used."""
    from exporter.convert.triton_check import golden_rows, served_outputs, stream_sequences
    from exporter.convert.triton_server import SequenceClient

    for offset, name in enumerate(STATIC):
        manifest, golden = loaded[name].manifest, loaded[name].golden
        tolerance = manifest.options.tolerance
        inputs = golden["serving_default/in/inputs"]
        statics = {i.name: golden[f"serving_default/in/{i.name}"] for i in manifest.static_inputs}
        rolled = {n: np.roll(v, 1, axis=0) for n, v in statics.items()}
        with SequenceClient("http", server.http_url) as client:
            good = stream_sequences(client, name, inputs, None, chunks=2, first_id=8000 + 100 * offset,
                                    outputs=served_outputs(manifest), statics=statics)
            wrong = stream_sequences(client, name, inputs, None, chunks=2, first_id=8050 + 100 * offset,
                                     outputs=served_outputs(manifest), statics=rolled)
            with pytest.raises(Exception, match=r"missing required input\(s\) \['"):  # Triton refuses it
                client.infer(name, inputs[:1, :2], sequence_id=8099 + 100 * offset, start=True, end=True)
        good_rows = golden_rows("good", *good, manifest, golden, tolerance)
        assert all(r.passed for r in good_rows), [r for r in good_rows if not r.passed]
        wrong_rows = golden_rows("rolled", *wrong, manifest, golden, tolerance)
        print(name, "rolled statics:", [(r.tensor, r.max_abs) for r in wrong_rows])
        assert not next(r for r in wrong_rows if r.tensor == "outputs").passed


def test_cli_converts_several_outputs_for_triton(several_output_exports, tmp_path):
    export_dir = several_output_exports["dict_of_outputs"].path
    result = CliRunner().invoke(app, ["convert", str(export_dir), "--to", "triton", "--out", str(tmp_path / "r"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["passed"] is True
    config = triton.read_config(tmp_path / "r" / "dict_of_outputs" / "config.pbtxt")
    assert sorted(t.name for t in config.output) == ["scores", "summary"]


@pytest.mark.slow
@pytest.mark.parametrize("factory,tensors", [("two_outputs", {"left", "right"}), ("static_context", {"outputs"})])
def test_export_targets_triton_python(tmp_path, factory, tensors):
    from exporter.convert.triton_check import check_repository

    base = tmp_path / "b"
    result = CliRunner().invoke(app, ["export", f"tests.exporter.real_models:{factory}", "--name", "m",
                                      "--base", str(base), "--targets", "triton-python", "--json"])
    assert result.exit_code == 0, result.output
    repo = base / "m" / "1" / "assets.extra" / "seqexport" / "runtimes" / "triton-python"
    report = check_repository(repo)  # finds the export above the repository
    for row in report.checks:
        print(row.signature, row.tensor, row.max_abs)
    assert report.passed, report.failures
    assert {c.tensor for c in report.checks if c.signature == "m grpc x1"} >= tensors
