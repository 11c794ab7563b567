"""Streaming through `seqexport serve`: chunked equals whole, no crosstalk, sessions survive restarts."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from exporter.artifact.compare import compare
from serving.session import StreamingSession

CHUNKS = (1, 5, 7, 11)  # uneven on purpose; 24 steps in all
STEPS = sum(CHUNKS)
FEATURES = 4


def _tolerance(offline):
    return offline.served.manifest.options.tolerance


def _sequence(batch, seed):
    return np.random.default_rng(seed).normal(size=(batch, STEPS, FEATURES)).astype(np.float32)


def _feed_in_chunks(session, x, chunks=CHUNKS, between=None):
    outputs, start = [], 0
    for size in chunks:
        outputs.append(session.feed(x[:, start : start + size]))
        start += size
        if between is not None:
            between(session)
    return np.concatenate(outputs, axis=1)


def _check(name, got, want, tolerance):
    result = compare("stream-vs-predict", "stream", name, got, want, tolerance)
    print(f"{name}: max abs {result.max_abs:.3g}, max rel {result.max_rel:.3g} "
          f"(atol {tolerance.atol:g}, rtol {tolerance.rtol:g}) {'ok' if result.passed else result.message}")
    return result


def _backend(kind, server):
    from serving.client import GrpcClient, RestClient

    if kind == "grpc":
        return GrpcClient(server.grpc_target)
    return RestClient(server.rest_url, format="row" if kind == "rest-row" else "columnar")


@pytest.mark.parametrize("kind", ["grpc", "rest-columnar", "rest-row", "in-process"])
def test_stream_in_chunks_equals_offline_predict(server, offline, kind):
    """Outputs and final states of a chunked stream equal `serving_default` over the whole sequence."""
    x = _sequence(3, seed=1)
    want = offline.predict({offline.keys.sequence: x})
    if kind == "in-process":
        session = StreamingSession(offline, batch_size=3)
        got = _feed_in_chunks(session, x)
    else:
        with _backend(kind, server) as client:
            session = StreamingSession(client.backend("demo"), batch_size=3)
            got = _feed_in_chunks(session, x)
    assert session.steps_seen == STEPS
    results = [_check(f"{kind} outputs", got, want[offline.keys.output], _tolerance(offline))]
    results += [_check(f"{kind} {k}", session.states[k], want[k], _tolerance(offline)) for k in offline.keys.states]
    assert all(r.passed for r in results)


def test_a_stream_that_drops_its_state_fails_the_check(server, offline, grpc_client):
    """The parity check has teeth: resetting the state between chunks is caught."""
    x = _sequence(3, seed=1)
    want = offline.predict({offline.keys.sequence: x})[offline.keys.output]
    session = StreamingSession(grpc_client.backend("demo"), batch_size=3)
    got = _feed_in_chunks(session, x, between=lambda s: s.reset())
    result = _check("outputs with the state dropped", got, want, _tolerance(offline))
    assert not result.passed and result.max_abs > 100 * _tolerance(offline).atol


def test_stream_matches_the_source_keras_model(server, offline, grpc_client):
    """Against the golden reference the exporter took from the Keras model itself, not the SavedModel."""
    from exporter.artifact import golden_io as golden
    from exporter.artifact.paths import golden_path

    data = golden.load(golden_path(offline.served.path))
    x, want = data["serving_default/in/inputs"], data["reference/out/outputs"]
    session = StreamingSession(grpc_client.backend("demo"), batch_size=x.shape[0])
    got = _feed_in_chunks(session, x, chunks=(2,) * (x.shape[1] // 2))
    assert _check("outputs vs Keras", got, want, _tolerance(offline)).passed


@pytest.mark.parametrize("kind", ["grpc", "rest-columnar"])
def test_32_concurrent_sessions_get_their_own_results(server, offline, kind):
    """32 sessions at once through one client, each with its own inputs: no state crosstalk."""
    sessions = 32
    x = _sequence(sessions, seed=2)
    want = offline.predict({offline.keys.sequence: x})[offline.keys.output]
    with _backend(kind, server) as client:
        backend = client.backend("demo")

        def run(i):
            return _feed_in_chunks(StreamingSession(backend, batch_size=1), x[i : i + 1], chunks=(4, 8, 12))

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=sessions) as pool:
            got = np.concatenate(list(pool.map(run, range(sessions))), axis=0)
        print(f"{kind}: {sessions} sessions x 3 chunks in {time.perf_counter() - started:.2f} s")
    result = _check(f"{kind} 32 sessions", got, want, _tolerance(offline))
    assert result.passed
    # Each session's answer is its own: swapping any two rows would not pass.
    swapped = got[[1, 0, *range(2, sessions)]]
    assert not _check(f"{kind} two sessions swapped", swapped, want, _tolerance(offline)).passed


def test_masked_stream_with_lengths_equals_predict(server, serving_base):
    """Ragged rows streamed with per-chunk lengths equal a masked whole-sequence predict."""
    from serving.client import RestClient, SavedModelBackend

    local = SavedModelBackend(serving_base / "masked" / "1")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 12, 3)).astype(np.float32)
    lengths = np.array([12, 7, 2], np.int32)
    keys = local.keys
    want = local.predict({keys.sequence: x, keys.lengths: lengths})
    with RestClient(server.rest_url, format="row") as client:
        session = StreamingSession(client.backend("masked"), batch_size=3)
        outputs = []
        for start in range(0, 12, 4):
            chunk_lengths = np.clip(lengths - start, 0, 4).astype(np.int32)
            outputs.append(session.feed(x[:, start : start + 4], chunk_lengths))
    tolerance = local.served.manifest.options.tolerance
    got = np.concatenate(outputs, axis=1)
    valid = np.arange(12)[None, :] < lengths[:, None]  # padded steps' outputs are not defined by the contract
    assert _check("masked outputs (valid steps)", got[valid], want[keys.output][valid], tolerance).passed
    assert all(_check(f"masked {k}", session.states[k], want[k], tolerance).passed for k in keys.states)


# ----------------------------------------------------------------------------- the CLI, in its own process


@pytest.mark.slow
def test_cli_server_restart_mid_stream_loses_nothing(serving_base, offline):
    """Stream half through one `seqexport serve` process, kill it, resume the saved session on a new one."""
    from serving.client import GrpcClient, RestClient
    from serving.server.server import server_process

    x = _sequence(2, seed=4)
    want = offline.predict({offline.keys.sequence: x})
    with server_process(serving_base, "--poll-seconds", "0.2") as first:
        assert first.models["demo"] == [{"version": 1, "state": "AVAILABLE", "error": ""}]
        with GrpcClient(first.grpc_target) as client:
            session = StreamingSession(client.backend("demo"), batch_size=2)
            head = _feed_in_chunks(session, x, chunks=CHUNKS[:2])
            blob = session.save()
        first.process.kill()  # a crash, not a clean stop
        first.process.wait(timeout=30)
    assert session.steps_seen == sum(CHUNKS[:2])

    with server_process(serving_base) as second:
        with RestClient(second.rest_url) as client:  # another transport, too
            resumed = StreamingSession.restore(blob, client.backend("demo"))
            tail = _feed_in_chunks(resumed, x[:, sum(CHUNKS[:2]) :], chunks=CHUNKS[2:])
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=30) == 0, second.stderr_text()
    assert "model demo version 1 available" in second.stderr_text()
    assert resumed.steps_seen == STEPS
    got = np.concatenate([head, tail], axis=1)
    tolerance = _tolerance(offline)
    assert _check("outputs across a restart", got, want[offline.keys.output], tolerance).passed
    assert all(_check(f"{k} across a restart", resumed.states[k], want[k], tolerance).passed
               for k in offline.keys.states)


def test_cli_refuses_bad_bases_and_busy_ports(serving_base, server):
    from typer.testing import CliRunner

    from exporter.cli.app import app

    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, ["serve", *args])
        return result.exit_code, " ".join(result.output.split())  # rich wraps long lines

    code, output = run(str(serving_base / "missing"))
    assert code == 2 and "does not exist" in output, output
    code, output = run(str(serving_base / "demo"))
    assert code == 2 and "--name demo" in output, output
    code, output = run(str(serving_base), "--grpc-port", str(server.grpc_port), "--rest-port", "0")
    assert code == 2 and "Cannot start the server" in output, output
    code, output = run(str(serving_base), "--label", "demo-stable")
    assert code == 2 and "MODEL:LABEL=VERSION" in output, output
    for args in (("--name", "../demo"), ("--label", "../x:stable=1")):  # never a folder outside BASE
        code, output = run(str(serving_base), *args)
        assert code == 2 and "is not allowed" in output, output


@pytest.fixture(scope="module")
def several_outputs_server(several_output_exports, static_input_exports, tmp_path_factory):
    """`seqexport serve` over copies of the several-output and static-input exports (`NAME/1` each)."""
    import shutil

    from serving.server.server import ModelServer, ServerOptions

    base = tmp_path_factory.mktemp("several-outputs-and-static-inputs")
    exports = {**several_output_exports, **static_input_exports}
    for name, export in exports.items():
        shutil.copytree(export.path, base / name / "1")
    with ModelServer(ServerOptions(base=base, poll_seconds=0.2)) as running:
        for name in exports:
            running.wait_until_available(name, timeout=60)
        yield running


@pytest.mark.parametrize("kind", ["grpc", "rest-columnar", "rest-row"])
def test_every_output_is_served_by_name(several_outputs_server, several_output_exports, kind):
    """The server answers each signature with every output the SavedModel returns, over the wire."""
    import tensorflow as tf

    from tests.exporter import real_models
    from tests.exporter.models import F

    name = "head_and_lstm_states"
    _, keys, _ = real_models.SEVERAL_OUTPUTS[name]
    loaded = tf.saved_model.load(str(several_output_exports[name].path))
    x = np.random.default_rng(3).normal(size=(2, 5, F)).astype(np.float32)
    states = {k: v.numpy() for k, v in loaded.signatures["initial_state"](batch_size=tf.constant(2)).items()}
    feeds = {"serving_default": {"inputs": x}, "stream": {"inputs": x, **states}, "step": {"x": x[:, 0], **states}}
    with _backend(kind, several_outputs_server) as client:
        for signature, feed in feeds.items():
            got = client.predict(name, feed, signature=signature)
            want = {k: v.numpy() for k, v in loaded.signatures[signature](**feed).items()}
            assert set(got) == set(want) and set(keys) <= set(got), (signature, sorted(got))
            for key in want:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- several outputs, static inputs

SEVERAL_AND_STATIC = ("two_heads_on_gru", "head_and_lstm_states", "dict_of_outputs", "static_features_per_step",
                      "static_initial_state")


@pytest.fixture(scope="module")
def local_backends(several_output_exports, static_input_exports):
    """Each several-output or static-input export loaded in this process once: the offline reference."""
    from serving.client import SavedModelBackend

    exports = {**several_output_exports, **static_input_exports}
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = SavedModelBackend(exports[name].path)
        return cache[name]

    return get


def _frames(batch, seed):
    from tests.exporter.models import F

    return np.random.default_rng(seed).normal(size=(batch, STEPS, F)).astype(np.float32)


def _statics(keys, batch, seed):
    return {name: np.random.default_rng(seed).normal(size=(batch, 3)).astype(np.float32) for name in keys.statics}


def _outputs_in_chunks(session, x, chunks=CHUNKS):
    """Every output of a chunked stream by name, concatenated over time (`outputs` for one output)."""
    parts, start = [], 0
    for size in chunks:
        out = session.feed(x[:, start : start + size])
        parts.append(out if isinstance(out, dict) else {"outputs": out})
        start += size
    return {key: np.concatenate([p[key] for p in parts], axis=1) for key in parts[0]}


def _chunks_for(local):
    """`CHUNKS`, or uneven chunks adding up to the model's own length where its input fixes one
    (`serving_default` takes only that length)."""
    from exporter.artifact.manifest import read_manifest

    fixed = read_manifest(local.served.path).fixed_steps
    return CHUNKS if fixed is None else (1, 2, fixed - 3)


def _by_output_key(local, got):
    """`got` keyed by the export's output keys (a one-output session returns one array)."""
    if local.keys.several_outputs:
        assert sorted(got) == list(local.keys.outputs) and len(got) > 1, sorted(got)
        return got
    assert sorted(got) == ["outputs"]
    return {local.keys.output: got["outputs"]}


def _check_against_predict(label, local, session, got, want):
    """Outputs and final states against `serving_default`; a last-step output is compared at its last step."""
    tolerance = _tolerance(local)
    results = []
    for key in local.keys.outputs:
        value = got[key] if want[key].ndim == got[key].ndim else got[key][:, -1]
        results.append(_check(f"{label} {key}", value, want[key], tolerance))
    results += [_check(f"{label} {k}", session.states[k], want[k], tolerance) for k in local.keys.states]
    return results


@pytest.mark.parametrize("kind", ["grpc", "rest-columnar", "rest-row", "in-process"])
@pytest.mark.parametrize("name", SEVERAL_AND_STATIC)
def test_a_session_streams_every_output_and_static_input(several_outputs_server, local_backends, name, kind):
    """Chunked outputs (each by name) and final states equal `serving_default` over the whole sequence,
    the static inputs given once to the session."""
    local = local_backends(name)
    chunks = _chunks_for(local)
    x = _frames(3, seed=5)[:, : sum(chunks)]
    statics = _statics(local.keys, 3, seed=6)
    want = local.predict({local.keys.sequence: x, **statics})
    if kind == "in-process":
        session = StreamingSession(local, batch_size=3, statics=statics)
        got = _outputs_in_chunks(session, x, chunks)
    else:
        with _backend(kind, several_outputs_server) as client:
            session = StreamingSession(client.backend(name), batch_size=3, statics=statics)
            got = _outputs_in_chunks(session, x, chunks)
    got = _by_output_key(local, got)
    assert all(r.passed for r in _check_against_predict(f"{name} {kind}", local, session, got, want))


def test_static_inputs_set_the_state_and_are_checked(several_outputs_server, local_backends):
    """The initial state comes from the static inputs: zeros instead fail the check, other values give
    other outputs; a session without them, or with an unknown name, is refused by name."""
    from serving.client import GrpcClient

    local = local_backends("static_initial_state")
    x = _frames(2, seed=7)
    statics = _statics(local.keys, 2, seed=8)
    want = local.predict({local.keys.sequence: x, **statics})
    with GrpcClient(several_outputs_server.grpc_target) as client:
        backend = client.backend("static_initial_state")
        session = StreamingSession(backend, batch_size=2, statics=statics)
        got = _by_output_key(local, _outputs_in_chunks(session, x))
        assert all(r.passed for r in _check_against_predict("from initial_state", local, session, got, want))
        zeros = {k: np.zeros_like(want[k]) for k in local.keys.states}
        session = StreamingSession(backend, batch_size=2, states=zeros, statics=statics)
        got = _by_output_key(local, _outputs_in_chunks(session, x))
        assert not all(r.passed for r in _check_against_predict("from zeros", local, session, got, want))
        other = {k: v + 1.0 for k, v in statics.items()}
        session = StreamingSession(backend, batch_size=2, statics=other)
        got = _by_output_key(local, _outputs_in_chunks(session, x))
        assert not all(r.passed for r in _check_against_predict("other statics", local, session, got, want))
        with pytest.raises(ValueError, match=r"takes the static input\(s\) \['context'\] with every call"):
            StreamingSession(backend, batch_size=2)
        with pytest.raises(ValueError, match=r"unknown static input\(s\) \['speaker'\]"):
            StreamingSession(backend, batch_size=2, statics={**statics, "speaker": statics["context"]})
    with pytest.raises(ValueError, match=r"unknown static input\(s\) \['context'\]; this export takes none"):
        StreamingSession(local_backends("two_heads_on_gru"), batch_size=2, statics=statics)


@pytest.mark.parametrize("name", ["dict_of_outputs", "static_initial_state"])
def test_a_saved_session_resumes_on_another_transport(several_outputs_server, local_backends, name):
    """Half the stream over gRPC, the session saved (states and static inputs), resumed over REST."""
    from serving.client import GrpcClient, RestClient

    local = local_backends(name)
    x = _frames(2, seed=9)
    statics = _statics(local.keys, 2, seed=10)
    want = local.predict({local.keys.sequence: x, **statics})
    half = sum(CHUNKS[:2])
    with GrpcClient(several_outputs_server.grpc_target) as client:
        session = StreamingSession(client.backend(name), batch_size=2, statics=statics)
        head = _outputs_in_chunks(session, x[:, :half], chunks=CHUNKS[:2])
        blob = session.save()
    with RestClient(several_outputs_server.rest_url, format="row") as client:
        resumed = StreamingSession.restore(blob, client.backend(name))
        assert sorted(resumed.statics) == sorted(statics) and resumed.steps_seen == half
        tail = _outputs_in_chunks(resumed, x[:, half:], chunks=CHUNKS[2:])
    got = _by_output_key(local, {key: np.concatenate([head[key], tail[key]], axis=1) for key in head})
    assert all(r.passed for r in _check_against_predict(f"{name} resumed", local, resumed, got, want))


@pytest.fixture(scope="module")
def sequence_inputs_server(sequence_input_exports):
    """`seqexport serve` over the several-sequence-input exports (`NAME/1` each, warmup replayed on load)."""
    from serving.server.server import ModelServer, ServerOptions

    base = next(iter(sequence_input_exports.values())).path.parent.parent
    with ModelServer(ServerOptions(base=base, poll_seconds=0.2)) as running:
        for name in sequence_input_exports:
            running.wait_until_available(name, timeout=60)
        yield running


@pytest.mark.parametrize("kind", ["grpc", "rest-columnar"])
def test_sequence_inputs_are_served_by_name(sequence_inputs_server, sequence_input_exports, kind):
    """Token ids, float features and a static input over the wire, in every signature that takes them."""
    import tensorflow as tf

    name = "tokens_features_and_static_into_gru"
    loaded = tf.saved_model.load(str(sequence_input_exports[name].path))
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, 11, size=(2, 6)).astype(np.int32)
    features = rng.normal(size=(2, 6, 3)).astype(np.float32)
    speaker = rng.normal(size=(2, 2)).astype(np.float32)
    states = {k: v.numpy() for k, v in
              loaded.signatures["initial_state"](batch_size=tf.constant(2), speaker=tf.constant(speaker)).items()}
    feeds = {"serving_default": {"inputs": tokens, "features": features, "speaker": speaker},
             "stream": {"inputs": tokens[:, :2], "features": features[:, :2], "speaker": speaker, **states},
             "step": {"x": tokens[:, 0], "features": features[:, 0], "speaker": speaker, **states}}
    with _backend(kind, sequence_inputs_server) as client:
        for signature, feed in feeds.items():
            got = client.predict(name, feed, signature=signature)
            want = {k: v.numpy() for k, v in loaded.signatures[signature](**feed).items()}
            assert set(got) == set(want), (signature, sorted(got))
            for key in want:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6)


def _random_feed(view, keys, batch, steps, seed):
    """Random values for every input of `stream` but the states: `[B, T, ...]` sequences, `[B, ...]` statics
    (token ids below the smallest vocabulary of the test models)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for key in (keys.sequence, *keys.sequences, *keys.statics):
        sig = view.inputs[key]
        shape = (batch, *sig.shape[1:]) if key in keys.statics else (batch, steps, *sig.shape[2:])
        if np.dtype(sig.dtype).kind in "iu":
            feed[key] = rng.integers(0, 11, size=shape).astype(sig.dtype)
        else:
            feed[key] = rng.normal(size=shape).astype(sig.dtype)
    return feed


def _outputs_of_chunks(session, feed, keys, chunks=CHUNKS, others=None):
    """Every output by name of a chunked stream, each chunk feeding the same steps of every sequence input."""
    others = {k: feed[k] for k in keys.sequences} if others is None else others
    parts, start = [], 0
    for size in chunks:
        cut = slice(start, start + size)
        out = session.feed(feed[keys.sequence][:, cut], sequences={k: v[:, cut] for k, v in others.items()})
        parts.append(out if isinstance(out, dict) else {keys.output: out})
        start += size
    return {key: np.concatenate([p[key] for p in parts], axis=1) for key in parts[0]}


@pytest.mark.parametrize("kind", ["grpc", "rest-columnar", "rest-row", "in-process"])
@pytest.mark.parametrize("name", ["two_streams_into_lstm", "tokens_features_and_static_into_gru"])
def test_a_session_streams_several_sequence_inputs(sequence_inputs_server, sequence_input_exports, name, kind):
    """Chunked outputs and final states equal `serving_default` over the whole sequence, every sequence input
    fed chunk by chunk (`feed(chunk, sequences=...)`); the other inputs' steps in the wrong order do not."""
    from serving.client import GrpcClient, SavedModelBackend

    local = SavedModelBackend(sequence_input_exports[name].path)
    keys = local.keys
    assert (keys.sequence, keys.sequences) == ("inputs", {"two_streams_into_lstm": ("b",)}.get(name, ("features",)))
    feed = _random_feed(local.served.views["stream"], keys, 3, STEPS, seed=11)
    statics = {k: feed[k] for k in keys.statics}
    want = local.predict(feed)
    if kind == "in-process":
        backend, client = local, None
    else:
        client = _backend(kind, sequence_inputs_server)
        backend = client.backend(name)
    try:
        session = StreamingSession(backend, batch_size=3, statics=statics)
        got = _outputs_of_chunks(session, feed, keys)
        assert session.steps_seen == STEPS and sorted(got) == list(keys.outputs)
        assert all(r.passed for r in _check_against_predict(f"{name} {kind}", local, session, got, want))
        if kind == "grpc":  # teeth: the other inputs reversed in time give other outputs
            assert isinstance(client, GrpcClient)
            session = StreamingSession(backend, batch_size=3, statics=statics)
            reversed_others = {k: feed[k][:, ::-1] for k in keys.sequences}
            got = _outputs_of_chunks(session, feed, keys, others=reversed_others)
            assert not all(r.passed for r in _check_against_predict("reversed", local, session, got, want))
    finally:
        if client is not None:
            client.close()


def test_a_session_refuses_missing_unknown_or_misshapen_sequence_inputs(sequence_input_exports, local_backends):
    """Each refusal names the sequence input and what to pass instead."""
    from serving.client import SavedModelBackend

    local = SavedModelBackend(sequence_input_exports["two_streams_into_lstm"].path)
    feed = _random_feed(local.served.views["stream"], local.keys, 2, 4, seed=12)
    session = StreamingSession(local, batch_size=2)
    with pytest.raises(ValueError, match=r"takes the sequence input\(s\) \['b'\] beside `inputs`.*"
                                         r"session.feed\(chunk, sequences=\{'b': \.\.\.\}\)"):
        session.feed(feed["inputs"])
    with pytest.raises(ValueError, match=r"unknown sequence input\(s\) \['c'\]; this export takes \['b'\]"):
        session.feed(feed["inputs"], sequences={"b": feed["b"], "c": feed["b"]})
    with pytest.raises(ValueError, match=r"sequence input 'b' has shape \[2, 3, 3\]; it needs the chunk's batch "
                                         r"size and steps \[2, 4\]"):
        session.feed(feed["inputs"], sequences={"b": feed["b"][:, :3]})
    assert session.steps_seen == 0  # nothing was sent
    one_input = StreamingSession(local_backends("two_heads_on_gru"), batch_size=2)
    with pytest.raises(ValueError, match=r"unknown sequence input\(s\) \['b'\]; this export takes none"):
        one_input.feed(_frames(2, seed=13), sequences={"b": feed["b"]})
