"""Load test of `seqexport serve` on loopback: many streaming sessions, bad requests mixed in, a publish mid-run.

`run_stress(base, name, config)` copies the newest version of `base/name` into a
scratch folder (the caller's folder is never written), serves it with
`seqexport serve` in a child process on 127.0.0.1, and runs `config.sessions`
concurrent `StreamingSession`s of `config.chunks` chunks each (half over gRPC,
half over REST). Before every chunk, with probability `config.bad_fraction`, the
session first sends a bad request (wrong dtype, wrong shape, garbage bytes,
malformed JSON, an oversize body, unknown model or signature, ...) and checks the
status it gets. Sessions keep starting until `config.min_requests` requests were
sent. Once `publish_after` requests were sent, a new version is published (a copy
of the first, staged and renamed as `seqexport export` does), and sessions that
start afterwards must run on it.

It reports: requests/s, p50/p99 latency of the good requests, answers to bad
requests by code, the server's RSS (VmRSS of its process) after the first
`memory_baseline` requests and after `min_requests`, and the properties the
issue asks for: zero wrong results (each session's outputs and final states equal
the same version's offline `serving_default` on the whole sequence, computed in
this process, within the export's own output tolerance), zero dropped good
requests, every bad request answered with its code, memory growth within
`memory_budget_mb`, and the new version picked up without a failed request.
Bounded: a fixed request count and `time_limit_s`; loopback only.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import json
import random
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.artifact.compare import compare
from exporter.artifact.errors import BadInput
from exporter.artifact.paths import version_folders
from exporter.artifact.specs import CheckResult, Tolerance
from exporter.publish import staged_version
from serving.client import ClientError, GrpcClient, RestClient, SavedModelBackend
from serving.server.server import server_process
from serving.session import StreamingSession

GRPC, REST = "grpc", "rest"
_RSS_EVERY = 1_000
_LATENCY_PERCENTILES = (50, 99)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StressConfig:
    """What one stress run does.

    Attributes:
        sessions: concurrent streaming sessions (one client thread each).
        chunks: chunks per session.
        chunk_steps: time steps per chunk (batch size 1).
        bad_fraction: share of all requests that are bad ones, in [0, 0.5].
        min_requests: sessions keep starting until this many requests were sent
            (the memory check reads the server's RSS here); 0: one round of sessions.
        memory_baseline: request count at which the RSS baseline is read.
        memory_budget_mb: allowed RSS growth from the baseline to `min_requests`.
        publish_after: request count at which the new version is published;
            None: at 20% of the first round of sessions.
        late_sessions: at least this many sessions start after the new version
            is served (they must run on it).
        max_request_bytes: the server's request size limit (small, so oversize
            requests are cheap to send).
        seed: seed of the sequences and of the bad-request mix.
        time_limit_s: the run stops (and fails) after this long.
    """

    sessions: int = 64
    chunks: int = 200
    chunk_steps: int = 4
    bad_fraction: float = 0.1
    min_requests: int = 20_000
    memory_baseline: int = 1_000
    memory_budget_mb: float = 50.0
    publish_after: int | None = None
    max_request_bytes: int = 256 * 1024
    late_sessions: int = 2
    seed: int = 0
    time_limit_s: float = 900.0

    def __post_init__(self):
        for field in ("sessions", "chunks", "chunk_steps"):
            if getattr(self, field) < 1:
                raise ValueError(f"`{field}` must be positive. Got: {getattr(self, field)}")
        if not 0 <= self.bad_fraction <= 0.5:
            raise ValueError(f"`bad_fraction` must be in [0, 0.5]. Got: {self.bad_fraction}")
        if self.min_requests < 0 or self.memory_baseline < 1:
            raise ValueError(
                f"`min_requests` must be >= 0 and `memory_baseline` >= 1. Got: {self.min_requests}, "
                f"{self.memory_baseline}"
            )
        if self.time_limit_s <= 0:
            raise ValueError(f"`time_limit_s` must be positive. Got: {self.time_limit_s}")

    @classmethod
    def small(cls) -> "StressConfig":
        """A test-sized run: 8 sessions x 20 chunks, memory measured but not judged."""
        return cls(sessions=8, chunks=20, min_requests=0, memory_baseline=50, time_limit_s=300.0)

    def expected_requests(self) -> int:
        """Requests of one round of sessions (stream calls, bad ones, one metadata call each), or `min_requests`."""
        one_round = self.sessions * (self.chunks / (1 - self.bad_fraction) + 1)
        return int(max(self.min_requests, one_round))

    def publish_point(self) -> int:
        """Early in the first round, so sessions that started on the old version stream across the publish
        while every session started after it is served must get the new one."""
        one_round = self.sessions * (self.chunks / (1 - self.bad_fraction) + 1)
        return self.publish_after if self.publish_after is not None else int(0.2 * one_round)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StressReport:
    """What a stress run measured; `checks()` says which properties held (None: not measured).

    `stale_sessions` counts sessions that started after the new version was served
    but ran on an older one.
    """

    config: StressConfig
    seconds: float
    requests: int
    good: int
    bad: int
    metadata: int
    latency_ms: dict
    sessions: int
    sessions_by_version: dict
    wrong_sessions: int
    max_abs_error: float
    max_rel_error: float
    tolerance: Tolerance
    worst: str
    dropped: int
    dropped_examples: tuple[str, ...]
    bad_answers: dict
    bad_by_kind: tuple
    unexpected_answers: int
    unexpected_examples: tuple[str, ...]
    rss_mb: dict
    memory_growth_mb: float | None
    publish: dict
    stale_sessions: int
    completed: bool

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def checks(self) -> dict[str, bool | None]:
        return {
            "completed in time": self.completed,
            "zero wrong results": self.wrong_sessions == 0 and self.sessions > 0,
            "zero dropped good requests": self.dropped == 0 and self.good > 0,
            "every bad request got its code": self.unexpected_answers == 0,
            "memory within budget": (None if not self.config.min_requests  # not asked for
                                     else self.memory_growth_mb is not None
                                     and self.memory_growth_mb <= self.config.memory_budget_mb),
            "new version picked up": self.publish.get("picked_up_s") is not None
            and self.sessions_by_version.get(str(self.publish.get("version")), 0) > 0
            and self.stale_sessions == 0,
        }

    @property
    def passed(self) -> bool:
        return all(value is not False for value in self.checks().values())

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["config"] = self.config.to_json()
        data["tolerance"] = dataclasses.asdict(self.tolerance)
        data["requests_per_s"] = round(self.requests_per_s, 1)
        data["checks"] = self.checks()
        data["passed"] = self.passed
        return data


# ----------------------------------------------------------------------------- bad requests


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Target:
    """What bad requests need: the model, its keys and shapes, the server's addresses and limit."""

    name: str
    keys: object  # SequenceKeys
    features: tuple[int, ...]
    grpc_target: str
    rest_host: str
    rest_port: int
    max_request_bytes: int


class _BadRequests:
    """Each kind: (transport, expected answer, sender); a sender returns the answer it got."""

    def __init__(self, target: _Target, state_shapes: dict[str, tuple[int, ...]], grpc_client):
        import grpc

        self.target = target
        self.states = {k: np.zeros((1, *shape), np.float32) for k, shape in state_shapes.items()}
        self.grpc = grpc_client
        self._raw_channel = grpc.insecure_channel(target.grpc_target)
        self._garbage = self._raw_channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        keys = target.keys
        feed = {keys.sequence: np.zeros((1, 2, *target.features), np.float32), **self.states}
        if keys.lengths:
            feed[keys.lengths] = np.array([2], np.int32)
        self.feed = feed
        oversize_steps = target.max_request_bytes // (4 * int(np.prod(target.features))) + 1
        wrong_features = (*target.features[:-1], target.features[-1] + 1)
        kinds: dict[str, tuple[str, str, Callable[[], str]]] = {
            "grpc wrong dtype": (GRPC, "INVALID_ARGUMENT",
                                 lambda: self._grpc({**feed, keys.sequence: feed[keys.sequence].astype(np.float64)})),
            "grpc wrong shape": (GRPC, "INVALID_ARGUMENT",
                                 lambda: self._grpc({**feed, keys.sequence: np.zeros((1, 2, *wrong_features), np.float32)})),
            "grpc missing state": (GRPC, "INVALID_ARGUMENT",
                                   lambda: self._grpc({k: v for k, v in feed.items() if k != keys.states[0]})),
            "grpc batch mismatch": (GRPC, "INVALID_ARGUMENT",
                                    lambda: self._grpc({**feed, keys.states[0]: np.zeros((2, *state_shapes[keys.states[0]]), np.float32)})),
            "grpc unknown signature": (GRPC, "FAILED_PRECONDITION", lambda: self._grpc(feed, signature="no_such_signature")),
            "grpc unknown model": (GRPC, "NOT_FOUND", lambda: self._grpc(feed, model="no_such_model")),
            "grpc garbage bytes": (GRPC, "INVALID_ARGUMENT", self._grpc_garbage),
            "grpc oversize": (GRPC, "RESOURCE_EXHAUSTED",
                              lambda: self._grpc({**feed, keys.sequence: np.zeros((1, oversize_steps, *target.features), np.float32)})),
            "rest malformed JSON": (REST, "400", lambda: self._rest_raw(b'{"inputs": [1, 2')),
            "rest ragged list": (REST, "400", lambda: self._rest_json({"signature_name": "stream", "inputs": {
                **{k: v.tolist() for k, v in feed.items()}, keys.sequence: [[[0.0] * target.features[-1], [0.0]]]}})),
            "rest strings": (REST, "400", lambda: self._rest_json({"signature_name": "stream", "inputs": {
                **{k: v.tolist() for k, v in feed.items()}, keys.states[0]: [["x"] * state_shapes[keys.states[0]][-1]]}})),
            "rest wrong shape": (REST, "400", lambda: self._rest_json({"signature_name": "stream", "inputs": {
                **{k: v.tolist() for k, v in feed.items()}, keys.sequence: np.zeros((1, 2, *wrong_features)).tolist()}})),
            "rest unknown signature": (REST, "400", lambda: self._rest_json({"signature_name": "nope", "inputs": {}})),
            "rest unknown model": (REST, "404", lambda: self._rest_json({"inputs": {}}, model="no_such_model")),
            "rest oversize body": (REST, "413", self._rest_oversize),
        }
        if keys.lengths:
            kinds["grpc lengths outside [0, T]"] = (GRPC, "INVALID_ARGUMENT",
                                                     lambda: self._grpc({**feed, keys.lengths: np.array([3], np.int32)}))
            kinds["rest lengths outside [0, T]"] = (REST, "400", lambda: self._rest_json({"signature_name": "stream", "inputs": {
                **{k: v.tolist() for k, v in feed.items()}, keys.lengths: [-1]}}))
        self.kinds = kinds
        self.by_transport = {t: [k for k, v in kinds.items() if v[0] == t] for t in (GRPC, REST)}

    def close(self) -> None:
        self._raw_channel.close()

    def _grpc(self, feed, *, signature: str = "stream", model: str | None = None) -> str:
        try:
            self.grpc.predict(model or self.target.name, feed, signature=signature)
        except ClientError as exc:
            return exc.code.grpc_name
        return "OK"

    def _grpc_garbage(self) -> str:
        import grpc

        try:
            self._garbage(b"\xff\xff\xff\xff not a PredictRequest", timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK"

    def _path(self, model: str | None = None) -> str:
        return f"/v1/models/{model or self.target.name}:predict"

    def _rest_raw(self, body: bytes, model: str | None = None) -> str:
        connection = http.client.HTTPConnection(self.target.rest_host, self.target.rest_port, timeout=10)
        try:
            connection.request("POST", self._path(model), body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            return str(response.status)
        finally:
            connection.close()

    def _rest_json(self, document: dict, model: str | None = None) -> str:
        return self._rest_raw(json.dumps(document).encode(), model)

    def _rest_oversize(self) -> str:
        """Headers announcing a body over the limit; the server answers 413 without reading it."""
        with socket.create_connection((self.target.rest_host, self.target.rest_port), timeout=10) as sock:
            sock.sendall(
                f"POST {self._path()} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {self.target.max_request_bytes + 1}\r\n\r\n".encode()
            )
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        parts = reply.split(b" ", 2)
        return parts[1].decode() if len(parts) > 1 else "no answer"


# ----------------------------------------------------------------------------- the run


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class _Run:
    """Shared state of one stress run (counters under one lock)."""

    def __init__(self, config: StressConfig):
        self.config = config
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.requests = 0
        self.good = 0
        self.bad = 0
        self.metadata = 0
        self.reserved = 0.0
        self.sessions_started = 0
        self.late_started = 0
        self.publish_state = "due"  # then "served" or "failed"
        self.publish_now = threading.Event()
        self.latencies: dict[str, list[float]] = {GRPC: [], REST: []}
        self.bad_answers: collections.Counter = collections.Counter()
        self.unexpected: list[str] = []
        self.dropped: list[str] = []
        self.sessions_by_version: collections.Counter = collections.Counter()
        self.checks: list[CheckResult] = []
        # (session, transport, requests sent when it started, version it ran on, new version already served)
        self.starts: list[tuple[int, str, int, int, bool]] = []

    def count(self, kind: str) -> None:
        with self.lock:
            self.requests += 1
            setattr(self, kind, getattr(self, kind) + 1)

    def next_session(self) -> int | None:
        """A session number to run, or None when the run has enough (or must stop).

        Sessions start until one round and `min_requests` are covered; then at
        least `late_sessions` more start once the version published mid-run is
        served (a worker waits for that, asking for the publish if it is not due yet).
        """
        per_session = self.config.chunks / (1 - self.config.bad_fraction) + 1
        while True:
            with self.lock:
                if self.stop.is_set():
                    return None
                # 5% over `min_requests`: the bad requests are random, the count must still get there.
                regular = (self.sessions_started < self.config.sessions
                           or self.reserved < 1.05 * self.config.min_requests)
                late = self.publish_state == "served" and self.late_started < self.config.late_sessions
                if regular or late:
                    self.reserved += per_session
                    self.sessions_started += 1
                    self.late_started += 1 if self.publish_state == "served" else 0
                    return self.sessions_started - 1
                if self.publish_state in ("served", "failed"):
                    return None
                self.publish_now.set()
            time.sleep(0.05)


class _Timed:
    """A `Backend` that times each `stream` call and counts it as a good request."""

    def __init__(self, backend, run: _Run, transport: str):
        self.backend = backend
        self.run = run
        self.transport = transport

    def initial_state(self, batch_size):
        return self.backend.initial_state(batch_size)

    def stream(self, inputs, states, lengths=None):
        started = time.perf_counter()
        try:
            return self.backend.stream(inputs, states, lengths)
        finally:
            elapsed = time.perf_counter() - started
            self.run.count("good")
            with self.run.lock:
                self.run.latencies[self.transport].append(elapsed)


def reference(offline, keys, sequence: np.ndarray) -> dict[str, np.ndarray]:
    """The version's own `serving_default` over the whole sequence (in this process, no server)."""
    feed = {keys.sequence: sequence}
    if keys.lengths:
        feed[keys.lengths] = np.full(sequence.shape[0], sequence.shape[1], np.int32)
    outputs = offline.predict(feed)
    if outputs[keys.output].ndim < 3:  # last_step_only: compare through `stream` in one call instead
        states = offline.initial_state(sequence.shape[0])
        out, states = offline.stream(sequence, states, feed.get(keys.lengths))
        outputs = {keys.output: out, **states}
    return outputs


def session_checks(label: str, keys, outputs: np.ndarray, states: dict, want: dict,
                   tolerance: Tolerance) -> list[CheckResult]:
    """A streamed session's outputs and final states against the offline reference, one row per tensor."""
    rows = [compare("stress", label, keys.output, outputs, want[keys.output], tolerance)]
    return rows + [compare("stress", label, key, states[key], want[key], tolerance) for key in keys.states]


def run_stress(base: Path, name: str, config: StressConfig = StressConfig(),
               progress: Callable[[str], None] = lambda _: None) -> StressReport:
    """Serves a copy of `base/name` and loads it; see the module docstring.

    Raises:
        BadInput: `base/name` has no published version.
    """
    with served_copy(base, name) as scratch_base:
        return _run(scratch_base, name, config, progress)


@contextlib.contextmanager
def served_copy(base: Path, name: str):
    """A scratch base holding a copy of the newest version of `base/name` as version 1.

    Raises:
        BadInput: `base/name` has no published version.
    """
    folders = version_folders(Path(base) / name, loadable=True)
    if not folders:
        raise BadInput(f"{str(Path(base) / name)!r} has no version folder to serve (BASE/NAME/<number>/saved_model.pb).")
    with tempfile.TemporaryDirectory(prefix="seqexport-stress-") as scratch:
        shutil.copytree(folders[max(folders)], Path(scratch) / name / "1")
        yield Path(scratch)


def _run(base: Path, name: str, config: StressConfig, progress) -> StressReport:
    run = _Run(config)
    offline: dict[int, SavedModelBackend] = {1: SavedModelBackend(base / name / "1")}
    offline_lock = threading.Lock()
    manifest = offline[1].served.manifest
    tolerance = manifest.options.tolerance if manifest is not None else Tolerance(atol=1e-5, rtol=1e-4)
    keys = offline[1].keys
    stream_view = offline[1].served.views["stream"]
    features = tuple(stream_view.inputs[keys.sequence].shape[2:])
    state_shapes = {k: tuple(stream_view.inputs[k].shape[1:]) for k in keys.states}
    rss: dict[str, float | None] = {}
    rss_series: list[tuple[int, float | None]] = []
    publish: dict = {}

    progress("starting the server")
    server_args = ("--name", name, "--versions", "2", "--poll-seconds", "0.25",
                   "--max-request-bytes", str(config.max_request_bytes))
    with server_process(base, *server_args) as server, GrpcClient(server.grpc_target) as grpc_client, \
            RestClient(server.rest_url) as rest_client:
        pid = server.process.pid
        rss["start"] = rss_mb(pid)
        host, port = server.rest_url.removeprefix("http://").rsplit(":", 1)
        target = _Target(name=name, keys=keys, features=features, grpc_target=server.grpc_target,
                         rest_host=host, rest_port=int(port), max_request_bytes=config.max_request_bytes)
        bad = _BadRequests(target, state_shapes, grpc_client)
        clients = {GRPC: grpc_client, REST: rest_client}

        def offline_for(version: int) -> SavedModelBackend:
            with offline_lock:
                if version not in offline:
                    offline[version] = SavedModelBackend(base / name / str(version))
                return offline[version]

        def session(number: int) -> None:
            transport = (GRPC, REST)[number % 2]
            rng = np.random.default_rng([config.seed, number])
            mix = random.Random(f"{config.seed}-{number}")
            sequence = rng.normal(size=(1, config.chunks * config.chunk_steps, *features)).astype(np.float32)
            served_before = run.publish_state == "served"  # the new version was served before this session asked
            try:
                backend = clients[transport].backend(name)
            except Exception as exc:  # noqa: BLE001 - a dropped good request, reported
                run.count("metadata")
                with run.lock:
                    run.dropped.append(f"session {number} {transport} metadata: {type(exc).__name__}: {exc}")
                return
            run.count("metadata")
            with run.lock:
                run.starts.append((number, transport, run.requests, backend.version, served_before))

            streaming = StreamingSession(_Timed(backend, run, transport), batch_size=1)
            pieces = []
            for chunk in range(config.chunks):
                while mix.random() < config.bad_fraction:
                    kind = mix.choice(bad.by_transport[transport])
                    _, expected, send = bad.kinds[kind]
                    try:
                        answer = send()
                    except Exception as exc:  # noqa: BLE001 - no answer at all is an unexpected answer
                        answer = f"{type(exc).__name__}: {exc}"
                    run.count("bad")
                    with run.lock:
                        run.bad_answers[(kind, expected, answer)] += 1
                        if answer != expected:
                            run.unexpected.append(f"{kind}: expected {expected}, got {answer}")
                if run.stop.is_set():
                    return
                piece = sequence[:, chunk * config.chunk_steps:(chunk + 1) * config.chunk_steps]
                try:
                    pieces.append(streaming.feed(piece))
                except Exception as exc:  # noqa: BLE001 - a dropped good request, reported
                    with run.lock:
                        run.dropped.append(f"session {number} {transport} chunk {chunk}: {type(exc).__name__}: {exc}")
                    return
            want = reference(offline_for(backend.version), keys, sequence)
            results = session_checks(f"{transport} session {number} v{backend.version}", keys,
                                     np.concatenate(pieces, axis=1), streaming.states, want, tolerance)
            with run.lock:
                run.checks.extend(results)
                run.sessions_by_version[str(backend.version)] += 1

        def worker() -> None:
            while (number := run.next_session()) is not None:
                session(number)

        def watch() -> None:
            """Reads the RSS as the count passes its marks; publishes the new version on time."""
            next_mark = _RSS_EVERY
            publish_point = config.publish_point()
            while not run.stop.wait(0.02):
                count = run.requests
                if "baseline" not in rss and count >= config.memory_baseline:
                    rss["baseline"] = rss_mb(pid)
                    rss["baseline_at"] = count
                if config.min_requests and "at_min_requests" not in rss and count >= config.min_requests:
                    rss["at_min_requests"] = rss_mb(pid)
                    rss["at_min_requests_at"] = count
                if count >= next_mark:
                    rss_series.append((count, rss_mb(pid)))
                    next_mark += _RSS_EVERY
                if not publish and (count >= publish_point or run.publish_now.is_set()):
                    publish.update(_publish_copy(base / name, count, grpc_client, run, progress))
                    rss["after_publish"] = rss_mb(pid)  # a second version loaded: part of the growth
                    rss["after_publish_at"] = run.requests
                    with run.lock:
                        run.publish_state = "served" if publish.get("picked_up_s") is not None else "failed"

        started = time.monotonic()
        progress(f"{config.sessions} sessions x {config.chunks} chunks")
        watcher = threading.Thread(target=watch, name="stress-watch", daemon=True)
        watcher.start()
        workers = [threading.Thread(target=worker, name=f"stress-{i}", daemon=True) for i in range(config.sessions)]
        for thread in workers:
            thread.start()
        deadline = started + config.time_limit_s
        for thread in workers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        completed = not any(thread.is_alive() for thread in workers)
        run.stop.set()
        seconds = time.monotonic() - started
        watcher.join(timeout=60)
        for thread in workers:
            thread.join(timeout=30)
        rss["end"] = rss_mb(pid)
        bad.close()
        if server.process.poll() is not None:
            with run.lock:
                run.dropped.append(f"the server exited with {server.process.returncode}: {server.stderr_text()[-500:]}")

    return _report(run, config, seconds, completed, tolerance, rss, rss_series, publish)


def _publish_copy(model_dir: Path, count: int, client, run: _Run, progress) -> dict:
    """Publishes a copy of version 1 as the next version, as an export does; waits until it is served."""
    progress(f"publishing a new version after {count} requests")
    started = time.monotonic()
    with staged_version(model_dir.parent, model_dir.name) as staged:
        shutil.copytree(model_dir / "1", staged.path, dirs_exist_ok=True)
    version = staged.version
    info = {"version": version, "at_request": count, "picked_up_s": None}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not run.stop.is_set():
        try:
            if any(r.version == version and r.state.name == "AVAILABLE" for r in client.status(model_dir.name)):
                info["picked_up_s"] = round(time.monotonic() - started, 3)
                info["picked_up_at_request"] = run.requests
                progress(f"version {version} served after {info['picked_up_s']} s")
                break
        except Exception:  # noqa: BLE001 - not seen yet
            pass
        time.sleep(0.05)
    return info


def _by_code(answers: collections.Counter) -> dict[str, int]:
    codes: collections.Counter = collections.Counter()
    for (kind, _, answer), count in answers.items():
        codes[f"{kind.split(' ', 1)[0]} {answer}"] += count
    return dict(sorted(codes.items()))


def percentiles(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    ms = np.asarray(samples) * 1e3
    return {"n": len(ms), **{f"p{p}": round(float(np.percentile(ms, p)), 3) for p in _LATENCY_PERCENTILES}}


def _report(run: _Run, config, seconds, completed, tolerance, rss, rss_series, publish) -> StressReport:
    failures = [c for c in run.checks if not c.passed]
    worst = max(run.checks, key=lambda c: (not c.passed, c.max_abs or 0.0), default=None)
    baseline, after = rss.get("baseline"), rss.get("at_min_requests")
    growth = round(after - baseline, 1) if baseline is not None and after is not None else None
    rss_mb = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in rss.items()}
    rss_mb["series"] = [(count, round(value, 1) if value else None) for count, value in rss_series]
    return StressReport(
        config=config,
        seconds=round(seconds, 2),
        requests=run.requests,
        good=run.good,
        bad=run.bad,
        metadata=run.metadata,
        latency_ms={"all": percentiles(run.latencies[GRPC] + run.latencies[REST]),
                    GRPC: percentiles(run.latencies[GRPC]), REST: percentiles(run.latencies[REST])},
        sessions=sum(run.sessions_by_version.values()),
        sessions_by_version=dict(run.sessions_by_version),
        wrong_sessions=len({c.signature for c in failures}),
        max_abs_error=max((c.max_abs or 0.0 for c in run.checks), default=0.0),
        max_rel_error=max((c.max_rel or 0.0 for c in run.checks), default=0.0),
        tolerance=tolerance,
        worst="" if worst is None else f"{worst.signature} {worst.tensor}: {worst.message or 'ok'}",
        dropped=len(run.dropped),
        dropped_examples=tuple(run.dropped[:5]),
        bad_answers=_by_code(run.bad_answers),
        bad_by_kind=tuple(sorted((kind, expected, answer, count)
                                 for (kind, expected, answer), count in run.bad_answers.items())),
        unexpected_answers=len(run.unexpected),
        unexpected_examples=tuple(run.unexpected[:5]),
        rss_mb=rss_mb,
        memory_growth_mb=growth,
        publish=publish | {"sessions_started_before": sum(1 for row in run.starts if not row[4]),
                           "sessions_started_after": sum(1 for row in run.starts if row[4])},
        stale_sessions=sum(1 for row in run.starts if row[4] and row[3] != publish.get("version")),
        completed=completed,
    )
