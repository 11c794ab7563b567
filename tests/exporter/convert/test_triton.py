"""Triton model repository: the config parses back, agrees with the ONNX model, and drives it to the goldens.

Triton itself is not installable here; what Triton would do with the config
(feed each state output back as the next state input, zeros first) is replayed
with ONNX Runtime using only the names the parsed config gives.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as pb
from typer.testing import CliRunner

from exporter.cli import app
from exporter.compare import compare
from exporter.convert import triton
from exporter.convert.targets import convert_export
from serving.runtimes import OrtModel
from tests.exporter.convert.common import describe


@pytest.fixture(scope="module")
def repos(kind_exports, kind_loaded, tmp_path_factory):
    """`{kind: (report, repo)}` for a stacked and a masked model."""
    out = {}
    for kind in ("stacked_functional", "masking"):
        repo = tmp_path_factory.mktemp(f"triton_{kind}")
        out[kind] = (convert_export(kind_exports[kind], "triton", repo, loaded=kind_loaded[kind]), repo)
    return out


@pytest.mark.parametrize("kind", ["stacked_functional", "masking"])
def test_repository_layout_and_parity(repos, kind):
    report, repo = repos[kind]
    print(describe(report))
    assert report.passed, report.failures
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == [
        f"{kind}/1/model.onnx", f"{kind}/config.pbtxt", f"{kind}/parity.json"]
    assert any("tritonserver --model-repository=" in n for n in report.notes)


@pytest.mark.parametrize("kind", ["stacked_functional", "masking"])
def test_config_parses_back_and_agrees_with_the_onnx_model(repos, kind_loaded, kind):
    _, repo = repos[kind]
    config = triton.read_config(repo / kind / "config.pbtxt")
    model = OrtModel.load(repo / kind / "1" / "model.onnx")
    assert config == triton.model_config(kind, model)  # what was written is what parses back
    assert triton.check_config(config, model) == []
    assert [(c.name, [(i.kind, i.data_type) for i in c.control]) for c in config.sequence_batching.control_input] == [
        ("CORRID", [(pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID, pb.TYPE_UINT64)])]
    assert model.inputs["CORRID"].shape == (None, 1) and "CORRID" not in model.state_names
    manifest = kind_loaded[kind].manifest
    assert (config.name, config.platform, config.max_batch_size) == (kind, "onnxruntime_onnx", 8)
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [3])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("y", [2])]
    batching = config.sequence_batching
    assert batching.WhichOneof("strategy_choice") == "direct"
    assert batching.max_sequence_idle_microseconds == 60_000_000
    assert [(s.input_name, s.output_name, list(s.dims)) for s in batching.state] == [
        (s.name, f"{s.name}_next", list(s.shape)) for s in sorted(manifest.states, key=lambda s: s.name)]
    for state in batching.state:
        assert state.data_type == config.input[0].data_type  # float32 like x
        assert [(i.zero_data, list(i.dims)) for i in state.initial_state] == [(True, list(state.dims))]


def test_config_alone_drives_the_model_to_the_goldens(repos, kind_loaded):
    """Replays Triton's implicit state with ORT: zero state, each `output_name` fed back as `input_name`."""
    import onnxruntime as ort

    _, repo = repos["stacked_functional"]
    config = triton.read_config(repo / "stacked_functional" / "config.pbtxt")
    session = ort.InferenceSession(str(repo / "stacked_functional" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    golden = kind_loaded["stacked_functional"].golden
    inputs = golden["serving_default/in/inputs"]
    batch, steps = inputs.shape[:2]
    states = {s.input_name: np.zeros((batch, *s.dims), np.float32) for s in config.sequence_batching.state}
    fetch = [config.output[0].name] + [s.output_name for s in config.sequence_batching.state]
    # Triton feeds each sequence's correlation id to the CORRID control input; the model ignores it.
    (control,) = config.sequence_batching.control_input
    assert control.control[0].kind == control.control[0].CONTROL_SEQUENCE_CORRID
    ids = {control.name: np.arange(100, 100 + batch, dtype=np.uint64).reshape(batch, 1)}
    ys = []
    for t in range(steps):
        y, *new = session.run(fetch, {config.input[0].name: inputs[:, t], **states, **ids})
        ys.append(y)
        states = {s.input_name: v for s, v in zip(config.sequence_batching.state, new)}
    tolerance = kind_loaded["stacked_functional"].manifest.options.tolerance
    rows = [compare("triton", "replay", "outputs", np.stack(ys, 1), golden["serving_default/out/outputs"], tolerance)]
    rows += [compare("triton", "replay", n, v, golden[f"serving_default/out/{n}"], tolerance) for n, v in states.items()]
    print([(r.tensor, r.max_abs, r.atol, r.rtol) for r in rows])
    assert all(r.passed for r in rows)
    # The same replay with the state mapping crossed (h fed back as c) must fail.
    crossed = compare("triton", "replay", "outputs", _replay_crossed(session, config, inputs, ids),
                      golden["serving_default/out/outputs"], tolerance)
    print("crossed mapping:", crossed.max_abs)
    assert not crossed.passed


def _replay_crossed(session, config, inputs, ids):
    entries = list(config.sequence_batching.state)
    lstm = [s for s in entries if s.dims[0] == 5]  # the LSTM(5)'s h and c
    swap = {lstm[0].output_name: lstm[1].input_name, lstm[1].output_name: lstm[0].input_name}
    states = {s.input_name: np.zeros((inputs.shape[0], *s.dims), np.float32) for s in entries}
    fetch = [config.output[0].name] + [s.output_name for s in entries]
    ys = []
    for t in range(inputs.shape[1]):
        y, *new = session.run(fetch, {"x": inputs[:, t], **states, **ids})
        ys.append(y)
        states = {swap.get(s.output_name, s.input_name): v for s, v in zip(entries, new)}
    return np.stack(ys, 1)


def test_check_config_names_every_mismatch(repos):
    _, repo = repos["stacked_functional"]
    model = OrtModel.load(repo / "stacked_functional" / "1" / "model.onnx")
    config = triton.read_config(repo / "stacked_functional" / "config.pbtxt")
    config.input[0].dims[0] = 7
    config.output[0].data_type = config.output[0].data_type + 1
    config.sequence_batching.state[0].output_name = "nowhere"
    del config.sequence_batching.state[1]
    problems = triton.check_config(config, model)
    print(problems)
    text = "\n".join(problems)
    assert "config input 'x': dims [7], model has [3]" in text
    assert "config output 'y': data_type" in text
    assert "state output 'nowhere' is not a model output" in text
    assert any("is neither a config input nor a state" in p for p in problems)


def test_oldest_strategy_without_batching(kind_loaded):
    from exporter.convert import onnx

    step = onnx.convert_signature(kind_loaded["lstm"], "step")
    options = triton.TritonOptions(max_batch_size=0, strategy=triton.Strategy.OLDEST,
                                   max_sequence_idle_microseconds=5_000_000)
    model = OrtModel(triton.add_correlation_id_input(step, batched=False))
    config = triton.model_config("lstm", model, options)
    assert triton.check_config(config, model) == []
    assert model.inputs["CORRID"].shape == (1,)
    # Without the control input the model must not have the extra input either.
    plain = triton.model_config("lstm", OrtModel(step), dataclasses.replace(options, correlation_id=False))
    assert not plain.sequence_batching.control_input
    assert triton.check_config(plain, OrtModel(step)) == []
    assert any("CORRID" in p for p in triton.check_config(config, OrtModel(step)))
    assert config.sequence_batching.WhichOneof("strategy_choice") == "oldest"
    assert list(config.input[0].dims) == [-1, 3]  # no batching: the batch dimension is in dims
    assert config.sequence_batching.max_sequence_idle_microseconds == 5_000_000


def test_cli_writes_a_repository_without_touching_the_export(demo_export, tmp_path):
    before = {p: p.read_bytes() for p in demo_export.path.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, ["convert", str(demo_export.path), "--to", "triton", "--out",
                                      str(tmp_path / "repo"), "--name", "streamer", "--strategy", "oldest", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["target"] == "triton"
    config = triton.read_config(tmp_path / "repo" / "streamer" / "config.pbtxt")
    assert config.name == "streamer" and config.sequence_batching.WhichOneof("strategy_choice") == "oldest"
    assert (tmp_path / "repo" / "streamer" / str(demo_export.version) / "model.onnx").is_file()
    assert {p: p.read_bytes() for p in demo_export.path.rglob("*") if p.is_file()} == before


def test_cli_rejects_a_bad_strategy(demo_export, tmp_path):
    result = CliRunner().invoke(app, ["convert", str(demo_export.path), "--to", "triton", "--out",
                                      str(tmp_path), "--strategy", "fastest"])
    assert result.exit_code == 2 and "direct or oldest" in " ".join(result.output.split())
