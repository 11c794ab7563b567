"""Triton model repositories, offline and on the real `tritonserver` of the nvidia-pytriton wheel.

ONNX Runtime backend (the default): the config parses back, agrees with the ONNX
model, and drives it to the goldens when what Triton would do with it (feed each
state output back as the next state input, zeros first) is replayed with ONNX
Runtime; the real server here has no ONNX Runtime backend, so it checks the config
only as far as Triton's core goes.

Python backend: the real server loads the repository and streams sequences through
`model.py` over gRPC and HTTP (one server shared by the module's tests; the kill
test and the CLI start their own).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as pb
from typer.testing import CliRunner

from exporter.artifact.compare import compare
from exporter.cli.app import app
from exporter.convert import triton
from exporter.convert.runtimes import OrtModel
from exporter.convert.targets import convert_export
from tests import REPO_ROOT
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


# ---------------------------------------------------------------------------------------------
# The real server (Python backend)

IDLE_US = 1_000_000


@pytest.fixture(scope="module")
def python_repo(kind_exports, kind_loaded, tmp_path_factory):
    """A Python-backend repository: the stacked and masked models, plus copies of the stacked one
    with a 1 s idle timeout (`stacked_idle`), at most 2 live sequences (`stacked_bounded`), and
    no batching with the oldest strategy (`stacked_unbatched`)."""
    import shutil

    repo = tmp_path_factory.mktemp("triton_python")
    reports = {kind: convert_export(kind_exports[kind], "triton-python", repo, loaded=kind_loaded[kind])
               for kind in ("stacked_functional", "masking")}
    step = (repo / "stacked_functional" / "1" / triton.PYTHON_STEP_FILE).read_bytes()
    triton.write_python_repository(repo, name="stacked_idle", version=1, onnx_model=step,
                                   options=triton.TritonOptions(max_sequence_idle_microseconds=IDLE_US))
    triton.write_python_repository(repo, name="stacked_bounded", version=1, onnx_model=step,
                                   options=triton.TritonOptions(max_sequences=2))
    # One batch slot (no batching), oldest strategy: the check must not interleave more sequences than slots.
    triton.write_python_repository(repo, name="stacked_unbatched", version=1, onnx_model=step,
                                   options=triton.TritonOptions(max_batch_size=0, strategy=triton.Strategy.OLDEST))
    shutil.copy(repo / "stacked_functional" / "parity.json", repo / "stacked_unbatched" / "parity.json")
    return repo, reports


@pytest.fixture(scope="module")
def server(python_repo):
    from exporter.convert.triton_server import TritonServer

    with TritonServer(python_repo[0]) as running:
        print(f"tritonserver pid {running.pid} live in {running.start_seconds:.2f} s")
        yield running
    assert not running.running


@pytest.fixture(scope="module")
def clients(server):
    from exporter.convert.triton_server import SequenceClient

    with SequenceClient("grpc", server.grpc_url) as grpc, SequenceClient("http", server.http_url) as http:
        yield {"grpc": grpc, "http": http}


def _golden(kind_loaded, kind="stacked_functional"):
    loaded = kind_loaded[kind]
    return loaded.golden, loaded.manifest.options.tolerance


def test_python_repository_layout_and_config(python_repo, kind_loaded):
    repo, reports = python_repo
    for kind, report in reports.items():
        print(describe(report))
        assert report.passed, report.failures
        assert sorted(f.path for f in report.files) == [f"{kind}/1/model.py", f"{kind}/1/step.onnx",
                                                        f"{kind}/config.pbtxt"]
        assert any(f"seqexport check triton {repo}" in n for n in report.notes)
    config = triton.read_config(repo / "stacked_functional" / "config.pbtxt")
    control = pb.ModelSequenceBatching.Control
    assert (config.backend, config.platform, config.max_batch_size) == ("python", "", 8)
    assert [(c.name, c.control[0].kind) for c in config.sequence_batching.control_input] == [
        ("START", control.CONTROL_SEQUENCE_START), ("END", control.CONTROL_SEQUENCE_END),
        ("READY", control.CONTROL_SEQUENCE_READY), ("CORRID", control.CONTROL_SEQUENCE_CORRID)]
    assert config.sequence_batching.max_sequence_idle_microseconds == 60_000_000
    assert not config.sequence_batching.state  # the Python backend has no implicit state: model.py keeps it
    manifest = kind_loaded["stacked_functional"].manifest
    assert [(t.name, list(t.dims)) for t in config.input] == [("inputs", [-1, 3])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("outputs", [-1, 2])] + [
        (s.name, list(s.shape)) for s in sorted(manifest.states, key=lambda s: s.name)]
    spec = triton.python_spec(config)
    assert (spec["idle_seconds"], spec["max_sequences"]) == (60.0, 1024)
    assert (repo / "stacked_functional" / "1" / "model.py").read_text() == (
        Path(triton.__file__).parent / "triton_model.py").read_text()


def test_round_trip_on_the_real_server_equals_golden(python_repo, server, kind_loaded):
    from exporter.convert.triton_check import check_repository

    report = check_repository(python_repo[0], server=server,
                              names=("stacked_functional", "masking", "stacked_unbatched"))
    for row in report.checks:
        print(row.signature, row.tensor, row.max_abs, row.message)
    assert report.passed, report.failures
    streamed = {c.signature for c in report.checks if c.max_abs is not None}
    for name in ("stacked_functional", "masking", "stacked_unbatched"):
        assert {f"{name} {p} x{n}" for p in ("grpc", "http") for n in (1, 2, 6)} <= streamed
    assert {c.tensor for c in report.checks if c.signature.startswith("masking grpc")} == {
        "outputs[t<lengths]", *(s.name for s in kind_loaded["masking"].manifest.states)}
    assert max(c.max_abs for c in report.checks if c.max_abs is not None) < 1e-5


def test_check_cli_starts_and_stops_its_own_server(python_repo, tmp_path):
    """`seqexport check triton REPO --json`: its own server, stopped by pid; a wrong golden fails."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(python_repo[0] / "stacked_functional", repo / "stacked_functional")
    regions = set(Path("/dev/shm").glob("seqexport_triton_*"))  # the shared server's, if it runs
    result = CliRunner().invoke(app, ["check", "triton", str(repo), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    print("server start", data["start_seconds"], "s; check", data["seconds"], "s")
    assert data["ok"] and data["models"] == {"stacked_functional": "python"}
    assert data["server_version"] == "0.7.0" and data["start_seconds"] > 0
    assert set(Path("/dev/shm").glob("seqexport_triton_*")) <= regions  # its shared memory is gone
    parity = json.loads((repo / "stacked_functional" / "parity.json").read_text())
    result = CliRunner().invoke(app, ["check", "triton", str(repo), "--export", parity["export_dir"] + "-missing"])
    assert result.exit_code == 2 and "not a seqexport export" in " ".join(result.output.split())
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["check", "triton", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "is not a Triton model repository" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["check", "triton", str(repo), "--model", "nope"])
    assert result.exit_code == 2 and "has no model nope" in " ".join(result.output.split())


def test_check_fails_against_another_exports_goldens(python_repo, kind_exports, server):
    """The stacked model's repository checked against the LSTM export's goldens: rows fail, no crash."""
    from exporter.convert.triton_check import check_repository

    report = check_repository(python_repo[0], server=server, export=kind_exports["lstm"],
                              names=("stacked_functional",))
    assert not report.passed
    print(report.summary())
    assert any(c.signature.startswith("stacked_functional grpc") for c in report.failures)


def test_interleaved_sequences_do_not_cross_talk(clients, kind_loaded):
    """Two sequences at once per protocol (threads, so Triton batches them into one `execute`), plus
    their requests alternating: each must equal its own golden row."""
    import concurrent.futures

    from exporter.convert.triton_check import stream_sequences

    golden, tolerance = _golden(kind_loaded)
    inputs, want = golden["serving_default/in/inputs"], golden["serving_default/out/outputs"]
    assert np.abs(want[0] - want[1]).max() > 1e-2  # rows that differ: cross-talk would show

    from exporter.convert.triton_server import SequenceClient

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        jobs = {(p, r): pool.submit(_own_client_stream, SequenceClient, clients[p], p, inputs, r, 500 + 10 * i + r)
                for i, p in enumerate(("grpc", "http")) for r in (0, 1)}
        for (protocol, row), job in jobs.items():
            row_result = compare("triton", f"{protocol} threads", "outputs", job.result(), want[row], tolerance)
            print(protocol, row, row_result.max_abs)
            assert row_result.passed, row_result
    outputs, states = stream_sequences(clients["grpc"], "stacked_functional", inputs, None, chunks=3, first_id=900)
    assert compare("triton", "interleaved", "outputs", outputs["outputs"], want, tolerance).passed
    # The same requests with two rows' ids swapped after the first chunk: the outputs must go wrong.
    swapped = _stream_swapping_ids(clients["http"], inputs[:2], first_id=950)
    assert not compare("triton", "swapped", "outputs", swapped, want[:2], tolerance).passed


def _own_client_stream(client_class, shared, protocol, inputs, row, sequence_id):
    with client_class(protocol, shared.url) as client:
        outs = [client.infer("stacked_functional", inputs[row:row + 1, t:t + 1], sequence_id=sequence_id,
                             start=t == 0, end=t == inputs.shape[1] - 1)["outputs"] for t in range(inputs.shape[1])]
    return np.concatenate(outs, axis=1)[0]


def _stream_swapping_ids(client, inputs, first_id):
    half = inputs.shape[1] // 2
    pieces = {0: [], 1: []}
    for row in (0, 1):
        pieces[row].append(client.infer("stacked_functional", inputs[row:row + 1, :half], sequence_id=first_id + row,
                                        start=True)["outputs"])
    for row in (0, 1):
        pieces[row].append(client.infer("stacked_functional", inputs[row:row + 1, half:],
                                        sequence_id=first_id + 1 - row, end=True)["outputs"])
    return np.stack([np.concatenate(pieces[r], axis=1)[0] for r in (0, 1)])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_server_refuses_requests_outside_a_sequence(clients, kind_loaded, protocol):
    from tritonclient.utils import InferenceServerException

    client = clients[protocol]
    chunk = kind_loaded["stacked_functional"].golden["serving_default/in/inputs"][:1, :2]
    with pytest.raises(InferenceServerException, match="must specify a non-zero or non-empty correlation ID"):
        client.infer("stacked_functional", chunk)
    with pytest.raises(InferenceServerException, match="must specify the START flag on the first request"):
        client.infer("stacked_functional", chunk, sequence_id=4242)
    both = kind_loaded["stacked_functional"].golden["serving_default/in/inputs"][:2, :2]
    with pytest.raises(InferenceServerException, match="must specify batch-size 1"):
        client.infer("stacked_functional", both, sequence_id=4243, start=True)
    # The server keeps serving.
    assert client.infer("stacked_functional", chunk, sequence_id=4244, start=True, end=True)["outputs"].shape == (
        1, 2, 2)


def test_a_sequence_past_the_idle_timeout_starts_from_zero(clients, server, kind_loaded):
    import time

    from tritonclient.utils import InferenceServerException

    golden, tolerance = _golden(kind_loaded)
    inputs, want = golden["serving_default/in/inputs"], golden["serving_default/out/outputs"]
    client = clients["grpc"]
    first = client.infer("stacked_idle", inputs[:1, :3], sequence_id=77, start=True)["outputs"]
    assert compare("triton", "idle", "outputs", first[0], want[0, :3], tolerance).passed
    time.sleep(2.5 * IDLE_US / 1e6)
    with pytest.raises(InferenceServerException, match="sequence 77 .* must specify the START flag"):
        client.infer("stacked_idle", inputs[:1, 3:], sequence_id=77)
    # Started again, the same steps 3.. give what steps 0.. of a fresh sequence give, not the continuation.
    again = client.infer("stacked_idle", inputs[:1, 3:], sequence_id=77, start=True, end=True)["outputs"]
    fresh = client.infer("stacked_functional", inputs[:1, 3:], sequence_id=78, start=True, end=True)["outputs"]
    assert np.array_equal(again, fresh)
    assert not compare("triton", "idle", "outputs", again[0], want[0, 3:], tolerance).passed
    # model.py dropped its own copy of the state too (the request above ran its sweep).
    assert "dropped the state of sequence 77 after 1 s idle" in server.log_path.read_text()


def test_model_py_keeps_a_bounded_number_of_states(clients, kind_loaded):
    from tritonclient.utils import InferenceServerException

    golden, tolerance = _golden(kind_loaded)
    inputs, want = golden["serving_default/in/inputs"], golden["serving_default/out/outputs"]
    client = clients["http"]
    for sequence_id in (11, 12, 13):  # max_sequences=2: starting the third drops the least recently used
        client.infer("stacked_bounded", inputs[:1, :2], sequence_id=sequence_id, start=True)
    with pytest.raises(InferenceServerException, match="sequence 11 has no state"):
        client.infer("stacked_bounded", inputs[:1, 2:], sequence_id=11, end=True)
    rest = client.infer("stacked_bounded", inputs[:1, 2:], sequence_id=13, end=True)["outputs"]
    assert compare("triton", "bounded", "outputs", rest[0], want[0, 2:], tolerance).passed


def test_a_server_killed_mid_sequence_gives_an_error_never_a_wrong_result(python_repo, kind_loaded, tmp_path):
    from tritonclient.utils import InferenceServerException

    from exporter.convert.triton_server import SequenceClient, TritonServer

    golden, tolerance = _golden(kind_loaded)
    inputs, want = golden["serving_default/in/inputs"], golden["serving_default/out/outputs"]
    with TritonServer(python_repo[0], work_dir=tmp_path / "first") as first:
        ports = first.ports
        with SequenceClient("grpc", first.grpc_url, timeout=10) as client:
            client.infer("stacked_functional", inputs[:1, :3], sequence_id=5, start=True)
            first.kill()
            assert not first.running
            with pytest.raises(InferenceServerException, match="(?i)unavailable|connect"):
                client.infer("stacked_functional", inputs[:1, 3:], sequence_id=5, end=True)
            with TritonServer(python_repo[0], work_dir=tmp_path / "second", ports=ports) as second:
                print(f"restarted in {second.start_seconds:.2f} s on the same ports")
                # The old channel reconnects with backoff: retry while it is UNAVAILABLE (bounded), then
                # the restarted server knows no sequence 5 and says so.
                error = _after_reconnect(lambda: client.infer("stacked_functional", inputs[:1, 3:], sequence_id=5,
                                                              end=True))
                assert "must specify the START flag" in str(error), error
                outputs = [client.infer("stacked_functional", inputs[:1, :3], sequence_id=5, start=True)["outputs"],
                           client.infer("stacked_functional", inputs[:1, 3:], sequence_id=5, end=True)["outputs"]]
                assert compare("triton", "restart", "outputs", np.concatenate(outputs, 1)[0], want[0],
                               tolerance).passed
    assert not second.running and not first.running


def _after_reconnect(call, seconds: float = 20.0):
    """The error `call` raises once the server answers (it must raise: a result would be wrong)."""
    import time

    from tritonclient.utils import InferenceServerException

    deadline = time.monotonic() + seconds
    while True:
        try:
            result = call()
        except InferenceServerException as exc:
            if "UNAVAILABLE" not in str(exc) or time.monotonic() > deadline:
                return exc
            time.sleep(0.2)
        else:
            raise AssertionError(f"a restarted server continued a sequence it never saw: {result}")


def test_check_of_an_onnxruntime_repository_says_what_the_server_checked(repos, tmp_path):
    """The wheel's server has no ONNX Runtime backend: core validation only, the rest offline."""
    import shutil

    from exporter.convert.triton_check import check_repository

    _, source = repos["stacked_functional"]
    repo = tmp_path / "repo"
    shutil.copytree(source / "stacked_functional", repo / "stacked_functional")
    report = check_repository(repo)
    for row in report.checks:
        print(row.signature, row.tensor, row.passed, row.message)
    assert report.passed, report.failures
    assert [(c.signature, c.tensor) for c in report.checks] == [
        ("stacked_functional server", "config.pbtxt"), ("stacked_functional offline", "config vs model.onnx")]
    assert "core validation passed" in report.checks[0].message
    assert any("only the official Triton container" in n for n in report.notes)
    # A config Triton's core refuses (a control input declared twice): the server's row fails with its reason.
    config = triton.read_config(repo / "stacked_functional" / "config.pbtxt")
    config.sequence_batching.control_input.add(name="CORRID").control.add(
        kind=pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START, int32_false_true=[0, 1])
    triton.write_config(config, repo / "stacked_functional" / "config.pbtxt")
    report = check_repository(repo)
    assert not report.passed
    assert "specified for multiple control kinds" in report.checks[0].message
    assert any("declared 2 times" in c.message for c in report.checks[1:])  # the offline check agrees


def test_check_without_the_server_installed_is_exit_2(python_repo, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    result = CliRunner().invoke(app, ["check", "triton", str(python_repo[0])])
    assert result.exit_code == 2, result.output
    assert "pip install 'seqexport[triton]'" in " ".join(result.output.split())


def test_cli_python_backend_and_export_targets(kind_exports, tmp_path):
    import shutil

    from exporter.convert.targets import convert_in_export
    from exporter.convert.triton_check import check_repository

    result = CliRunner().invoke(app, ["convert", str(kind_exports["lstm"]), "--to", "onnx", "--backend", "python",
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--backend" in result.output
    result = CliRunner().invoke(app, ["convert", str(kind_exports["lstm"]), "--to", "triton", "--backend", "python",
                                      "--max-sequences", "7", "--max-sequence-idle-us", "2000000",
                                      "--out", str(tmp_path / "cli"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] == "triton-python"
    config = triton.read_config(tmp_path / "cli" / "lstm" / "config.pbtxt")
    assert config.backend == "python" and config.sequence_batching.max_sequence_idle_microseconds == 2_000_000
    assert (triton.python_spec(config)["max_sequences"], triton.python_spec(config)["idle_seconds"]) == (7, 2.0)
    export = tmp_path / "lstm" / "1"
    shutil.copytree(kind_exports["lstm"], export)
    (report,) = convert_in_export(export, ("triton-python",))
    assert report.passed, report.failures
    repo = export / "assets.extra" / "seqexport" / "runtimes" / "triton-python"
    assert (repo / "lstm" / "1" / "model.py").is_file()
    checked = check_repository(repo)  # finds the export above the repository
    assert checked.passed, checked.failures


def test_a_repository_converted_with_relative_paths_finds_its_export_from_anywhere(kind_exports, tmp_path,
                                                                                   monkeypatch):
    """The README's two lines, run in one folder with relative paths: `convert models/m/1 ... --out
    triton-repo`, then `check triton triton-repo` (which finds the export through parity.json)."""
    import shutil

    from exporter.convert.triton_check import find_export

    shutil.copytree(kind_exports["lstm"], tmp_path / "models" / "m" / "1")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["convert", "models/m/1", "--to", "triton", "--backend", "python",
                                      "--out", "triton-repo", "--json"])
    assert result.exit_code == 0, result.output
    model_folder = Path("triton-repo") / "lstm"
    assert find_export(model_folder).resolve() == (tmp_path / "models" / "m" / "1").resolve()
    monkeypatch.chdir(tmp_path / "models")  # elsewhere, and with the repository's absolute path
    assert find_export(tmp_path / model_folder).resolve() == (tmp_path / "models" / "m" / "1").resolve()


def test_a_killed_starter_takes_its_server_with_it(python_repo, tmp_path):
    """SIGKILL the process that started a server: the kernel kills the server too (no orphan)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import sys, time; from pathlib import Path; from exporter.convert.triton_server import TritonServer; "
              "s = TritonServer(Path(sys.argv[1])).start(); print(s.pid, flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", script, str(python_repo[0])], stdout=subprocess.PIPE, text=True,
                             cwd=REPO_ROOT)
    try:
        pid = int(child.stdout.readline())
        os.kill(pid, 0)  # the server runs
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for init to reap it is gone too
            if stat.read().split(")")[-1].split()[0] == "Z":
                break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
        raise AssertionError(f"tritonserver {pid} outlived the process that started it")
    # Its shared memory stays behind (nobody cleaned up) until the next server start removes it.
    from exporter.convert.triton_server import _remove_dead_regions

    left = list(Path("/dev/shm").glob(f"seqexport_triton_{child.pid}_*"))
    assert left, "the Python backend's regions were expected in /dev/shm"
    _remove_dead_regions()
    assert not any(p.exists() for p in left)
