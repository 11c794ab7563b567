"""`seqexport stress --connections N`: many concurrent connections against `seqexport serve` on loopback.

`run_connections(base, name, config)` serves a copy of the newest version of
`base/name` with `seqexport serve` in a child process, then runs
`config.connections` REST clients that open a new TCP connection for every
request (`Connection: close`, never resent) and `config.connections` gRPC
clients, each on its own channel, all at once, until `config.requests`
requests were sent. Every client streams sessions of `config.chunks` chunks
through the `stream` signature, carrying the state, and each finished session
is compared with the version's `serving_default` over the whole sequence
computed in this process.

It measures, per transport: requests, connection resets (ECONNRESET, EPIPE,
refused, closed without an answer; gRPC UNAVAILABLE), failed requests (any
other error answer), p50/p99 latency and requests/s; the server's RSS after
the first `memory_baseline` requests and at the end. Figures are reported,
never asserted as times; `passed` needs 0 resets, 0 failures, 0 wrong
sessions and (for runs of at least `memory_min_requests`) RSS growth within
`memory_budget_mb`.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.artifact.specs import Tolerance
from exporter.tools.stress import GRPC, REST, percentiles, reference, rss_mb, served_copy, session_checks
from serving.client import GrpcClient, RestClient, SavedModelBackend
from serving.server.server import server_process
from serving.session import StreamingSession

_RESET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionRefusedError, ConnectionAbortedError,
                 http.client.RemoteDisconnected, http.client.BadStatusLine)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConnectionsConfig:
    """What one connections run does.

    Attributes:
        connections: concurrent clients per transport (REST: a connection per request; gRPC: a channel each).
        requests: the run stops once this many requests were sent (both transports together).
        chunks: chunks per streamed session (batch size 1).
        chunk_steps: time steps per chunk.
        memory_baseline: request count at which the RSS baseline is read.
        memory_budget_mb: allowed RSS growth from the baseline to the end.
        memory_min_requests: runs shorter than this report the growth but do not judge it.
        timeout_s: per-request timeout.
        time_limit_s: the run stops (and fails) after this long.
        seed: seed of the sequences.
    """

    connections: int = 256
    requests: int = 20_000
    chunks: int = 10
    chunk_steps: int = 4
    memory_baseline: int = 1_000
    memory_budget_mb: float = 50.0
    memory_min_requests: int = 10_000
    timeout_s: float = 60.0
    time_limit_s: float = 900.0
    seed: int = 0

    def __post_init__(self):
        for field in ("connections", "requests", "chunks", "chunk_steps", "memory_baseline"):
            if getattr(self, field) < 1:
                raise ValueError(f"`{field}` must be positive. Got: {getattr(self, field)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConnectionsReport:
    """What a connections run measured (`transports[GRPC|REST]`: requests, resets, failures, latency_ms, per_s)."""

    config: ConnectionsConfig
    seconds: float
    requests: int
    transports: dict
    sessions: int
    wrong_sessions: int
    max_abs_error: float
    examples: tuple[str, ...]
    rss_mb: dict
    memory_growth_mb: float | None
    completed: bool

    @property
    def resets(self) -> int:
        return sum(t["resets"] for t in self.transports.values())

    @property
    def failures(self) -> int:
        return sum(t["failures"] for t in self.transports.values())

    def checks(self) -> dict[str, bool | None]:
        judged = self.requests >= self.config.memory_min_requests
        return {
            "completed in time": self.completed,
            "zero connection resets": self.resets == 0,
            "zero failed requests": self.failures == 0 and self.requests > 0,
            "zero wrong results": self.wrong_sessions == 0 and self.sessions > 0,
            "memory within budget": (None if not judged else self.memory_growth_mb is not None
                                     and self.memory_growth_mb <= self.config.memory_budget_mb),
        }

    @property
    def passed(self) -> bool:
        return all(value is not False for value in self.checks().values())

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["config"] = dataclasses.asdict(self.config)
        data["resets"] = self.resets
        data["failures"] = self.failures
        data["requests_per_s"] = round(self.requests / self.seconds, 1) if self.seconds else 0.0
        data["checks"] = self.checks()
        data["passed"] = self.passed
        return data


class _Counts:
    def __init__(self, config: ConnectionsConfig):
        self.config = config
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.requests = 0
        self.by = {t: collections.Counter() for t in (GRPC, REST)}
        self.latencies: dict[str, list[float]] = {GRPC: [], REST: []}
        self.examples: list[str] = []
        self.sessions = 0
        self.wrong = 0
        self.max_abs = 0.0

    def take(self) -> bool:
        """Reserves one request; False once the run has sent enough."""
        with self.lock:
            if self.stop.is_set() or self.requests >= self.config.requests:
                return False
            self.requests += 1
            return True

    def outcome(self, transport: str, kind: str, seconds: float | None = None, example: str = "") -> None:
        with self.lock:
            self.by[transport][kind] += 1
            if seconds is not None:
                self.latencies[transport].append(seconds)
            if example and len(self.examples) < 10:
                self.examples.append(example)


class _Enough(Exception):
    """The run has sent its requests: the session stops where it is."""


class _Counted:
    """A `Backend` whose every call is one counted, timed request; errors are sorted into resets and failures."""

    def __init__(self, backend, counts: _Counts, transport: str):
        self.backend, self.counts, self.transport = backend, counts, transport

    def _timed(self, call, *args):
        if not self.counts.take():
            raise _Enough
        started = time.perf_counter()
        try:
            result = call(*args)
        except Exception as exc:  # noqa: BLE001 - counted, the session stops
            kind = "resets" if _is_reset(exc) else "failures"
            self.counts.outcome(self.transport, kind, example=f"{self.transport}: {type(exc).__name__}: {exc}"[:300])
            raise
        self.counts.outcome(self.transport, "ok", time.perf_counter() - started)
        return result

    def initial_state(self, batch_size):
        return self._timed(self.backend.initial_state, batch_size)

    def stream(self, inputs, states, lengths=None):
        return self._timed(self.backend.stream, inputs, states, lengths)


def _is_reset(exc: BaseException) -> bool:
    if isinstance(exc, _RESET_ERRORS):
        return True
    code = getattr(exc, "code", None)
    name = getattr(code, "grpc_name", None) or getattr(code, "name", None)
    if name == "UNAVAILABLE" and getattr(exc, "http_status", None) is None:  # gRPC: connection trouble
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and _is_reset(cause)


def run_connections(base: Path, name: str, config: ConnectionsConfig = ConnectionsConfig(),
                    progress: Callable[[str], None] = lambda _: None) -> ConnectionsReport:
    """Serves a copy of `base/name` and loads it with many connections; see the module docstring.

    Raises:
        BadInput: `base/name` has no published version.
    """
    with served_copy(base, name) as scratch_base:
        return _run(scratch_base, name, config, progress)


def _run(base: Path, name: str, config: ConnectionsConfig, progress) -> ConnectionsReport:
    counts = _Counts(config)
    offline = SavedModelBackend(base / name / "1")
    manifest = offline.served.manifest
    tolerance = manifest.options.tolerance if manifest is not None else Tolerance(atol=1e-5, rtol=1e-4)
    keys = offline.keys
    features = tuple(offline.served.views["stream"].inputs[keys.sequence].shape[2:])
    offline_lock = threading.Lock()
    rss: dict = {}

    progress("starting the server")
    with server_process(base, "--name", name) as server:
        pid = server.process.pid
        rss["start"] = rss_mb(pid)
        # One metadata call per client up front (not counted): the sessions then pin version 1.
        rest_client = RestClient(server.rest_url, timeout=config.timeout_s, connection_per_request=True)
        rest_backend = rest_client.backend(name, timeout=config.timeout_s)

        def worker(transport: str, number: int) -> None:
            rng = np.random.default_rng([config.seed, number, transport == GRPC])
            if transport == GRPC:
                client = GrpcClient(server.grpc_target, timeout=config.timeout_s)
                backend = client.backend(name, timeout=config.timeout_s)
            else:
                client, backend = None, rest_backend
            try:
                while not counts.stop.is_set():
                    sequence = rng.normal(size=(1, config.chunks * config.chunk_steps, *features)).astype(np.float32)
                    pieces = []
                    try:
                        session = StreamingSession(_Counted(backend, counts, transport), batch_size=1)
                        for chunk in range(config.chunks):
                            pieces.append(session.feed(
                                sequence[:, chunk * config.chunk_steps:(chunk + 1) * config.chunk_steps]))
                    except _Enough:
                        return
                    except Exception:  # noqa: BLE001 - counted by _Counted; the client starts a new session
                        continue
                    with offline_lock:
                        want = reference(offline, keys, sequence)
                    rows = session_checks(f"{transport} client {number}", keys, np.concatenate(pieces, axis=1),
                                          session.states, want, tolerance)
                    with counts.lock:
                        counts.sessions += 1
                        counts.wrong += 0 if all(r.passed for r in rows) else 1
                        counts.max_abs = max([counts.max_abs, *(r.max_abs or 0.0 for r in rows)])
            finally:
                if client is not None:
                    client.close()

        def watch() -> None:
            while not counts.stop.wait(0.02):
                if "baseline" not in rss and counts.requests >= config.memory_baseline:
                    rss["baseline"] = rss_mb(pid)
                    rss["baseline_at"] = counts.requests

        progress(f"{config.connections} REST connections (one per request) + {config.connections} gRPC channels")
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        threads = [threading.Thread(target=worker, args=(t, i), name=f"conn-{t}-{i}", daemon=True,
                                    ) for i in range(config.connections) for t in (REST, GRPC)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        deadline = started + config.time_limit_s
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        completed = not any(thread.is_alive() for thread in threads)
        seconds = time.monotonic() - started
        counts.stop.set()
        watcher.join(timeout=10)
        rss["end"] = rss_mb(pid)
        rss["end_at"] = counts.requests
        rest_client.close()
        if server.process.poll() is not None:
            counts.examples.append(f"the server exited with {server.process.returncode}: {server.stderr_text()[-500:]}")
            counts.by[REST]["failures"] += 1

    transports = {}
    for transport in (GRPC, REST):
        by = counts.by[transport]
        total = by["ok"] + by["resets"] + by["failures"]
        transports[transport] = {
            "requests": total, "resets": by["resets"], "failures": by["failures"],
            "latency_ms": percentiles(counts.latencies[transport]),
            "per_s": round(total / seconds, 1) if seconds else 0.0,
        }
    baseline, end = rss.get("baseline"), rss.get("end")
    growth = round(end - baseline, 1) if baseline is not None and end is not None else None
    return ConnectionsReport(
        config=config, seconds=round(seconds, 2), requests=sum(t["requests"] for t in transports.values()),
        transports=transports, sessions=counts.sessions, wrong_sessions=counts.wrong,
        max_abs_error=counts.max_abs, examples=tuple(counts.examples),
        rss_mb={k: round(v, 1) if isinstance(v, float) else v for k, v in rss.items()},
        memory_growth_mb=growth, completed=completed,
    )
