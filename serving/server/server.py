"""A local development server speaking TF Serving's gRPC and REST APIs.

The `tensorflow_model_server` binary is not installable from the package
registries this project uses, so `seqexport serve BASE` stands in for it on a
developer machine and in tests: same services, same JSON, same version folder
rules (see `serving.server.registry`), so a client written against it works
against TF Serving unchanged. It is not a production server: one Python
process, no batching, no TLS.

Example:
    >>> options = ServerOptions(base=Path("models"), grpc_port=8500, rest_port=8501)
    >>> with ModelServer(options) as server:
    ...     server.wait_until_available("demo", timeout=60)
    ...     ...  # GrpcClient(server.grpc_target), RestClient(server.rest_url)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path

from serving.server.registry import (
    DEFAULT_LOAD_RETRY_INTERVAL_S,
    DEFAULT_MAX_NUM_LOAD_RETRIES,
    DEFAULT_POLL_SECONDS,
    ModelRegistry,
    State,
)
from serving.server.defaults import (  # noqa: F401  the server's defaults, importable from here too
    DEFAULT_GRPC_WORKERS,
    DEFAULT_HOST,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REST_BACKLOG,
    DEFAULT_REST_MAX_CONNECTIONS,
    DEFAULT_REST_WORKERS,
)
from serving.server.rest import RestServer

log = logging.getLogger("seqexport.serve")

STOP_GRACE_S = 2.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """How `seqexport serve` runs.

    Attributes:
        base: folder with one sub-folder per model (`BASE/NAME/<version>/`).
        grpc_port: gRPC port; 0 picks a free one (see `ModelServer.grpc_port`).
        rest_port: REST port; 0 picks a free one; None turns REST off.
        host: address both bind to; loopback unless told otherwise.
        names: serve only these models (default: every model folder under `base`).
        versions: serve the newest N versions of each model.
        labels: version labels, e.g. `{"demo": {"stable": 2}}`.
        poll_seconds: how often `base` is scanned for new or removed versions.
        max_request_bytes: largest request body accepted (gRPC: RESOURCE_EXHAUSTED, REST: 413).
        grpc_workers: gRPC handler threads (TF Serving's `--grpc_max_threads`).
        rest_workers: threads running REST requests (TF Serving's `--rest_api_num_threads`).
        rest_max_connections: REST connections served at once; a request over it gets 503.
        rest_backlog: the REST listen socket's backlog.
        max_num_load_retries: load tries after a failed one (TF Serving's `--max_num_load_retries`).
        load_retry_interval_s: seconds between two load tries (TF Serving's `--load_retry_interval_micros`).
        tensor_content: gRPC outputs in `tensor_content` rather than the typed fields
            (TF Serving's `--enable_serialization_as_tensor_content`).
    """

    base: Path
    grpc_port: int = 0
    rest_port: int | None = 0
    host: str = DEFAULT_HOST
    names: tuple[str, ...] = ()
    versions: int = 1
    labels: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    poll_seconds: float = DEFAULT_POLL_SECONDS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    grpc_workers: int = DEFAULT_GRPC_WORKERS
    rest_workers: int = DEFAULT_REST_WORKERS
    rest_max_connections: int = DEFAULT_REST_MAX_CONNECTIONS
    rest_backlog: int = DEFAULT_REST_BACKLOG
    max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES
    load_retry_interval_s: float = DEFAULT_LOAD_RETRY_INTERVAL_S
    tensor_content: bool = False

    def __post_init__(self):
        for field in ("grpc_workers", "rest_workers", "rest_max_connections", "rest_backlog"):
            if getattr(self, field) < 1:
                raise ValueError(f"`{field}` must be positive. Got: {getattr(self, field)}")
        if self.max_num_load_retries < 0 or self.load_retry_interval_s < 0:
            raise ValueError(
                f"`max_num_load_retries` and `load_retry_interval_s` must be >= 0. Got: "
                f"{self.max_num_load_retries}, {self.load_retry_interval_s}"
            )
        if self.poll_seconds <= 0:
            raise ValueError(f"`poll_seconds` must be positive. Got: {self.poll_seconds}")
        if self.max_request_bytes < 1024:
            raise ValueError(f"`max_request_bytes` must be at least 1024. Got: {self.max_request_bytes}")
        if self.versions < 1:
            raise ValueError(f"`versions` must be positive. Got: {self.versions}")
        for port_name in ("grpc_port", "rest_port"):
            port = getattr(self, port_name)
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"`{port_name}` must be in [0, 65535]. Got: {port}")


class ModelServer:
    """The registry, its polling thread, and the gRPC and REST front ends.

    `start()` binds both ports, loads what is under `base` (first poll, in the
    calling thread) and keeps polling in the background; `stop()` ends it all.
    """

    def __init__(self, options: ServerOptions):
        self.options = options
        self.registry = ModelRegistry(
            options.base, names=options.names, versions=options.versions, labels=options.labels,
            max_num_load_retries=options.max_num_load_retries, load_retry_interval_s=options.load_retry_interval_s,
        )
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc = None
        self._rest = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def grpc_target(self) -> str:
        return f"{_url_host(self.options.host)}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{_url_host(self.options.host)}:{self.rest_port}"

    def start(self) -> "ModelServer":
        """Binds the ports, loads the models once, starts polling.

        Raises:
            OSError: a port cannot be bound (in use, or not allowed).
        """
        import grpc

        from serving.server.grpc_service import add_services

        limit = self.options.max_request_bytes
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.options.grpc_workers, thread_name_prefix="seqexport-grpc"),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
        )
        add_services(self._grpc, self.registry, max_request_bytes=limit, tensor_content=self.options.tensor_content)
        address = f"{_url_host(self.options.host)}:{self.options.grpc_port}"
        try:
            self.grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
            raise OSError(f"cannot bind gRPC to {address}: {exc}") from None
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {address} (port in use?)")
        if self.options.rest_port is not None:
            self._rest = RestServer((self.options.host, self.options.rest_port), self.registry,
                                    max_request_bytes=limit, workers=self.options.rest_workers,
                                    max_connections=self.options.rest_max_connections,
                                    backlog=self.options.rest_backlog)
            self._rest.start()
            self.rest_port = self._rest.port
        self.registry.poll()
        self._grpc.start()
        self._poller = threading.Thread(target=self._poll_loop, name="seqexport-poll", daemon=True)
        self._poller.start()
        return self

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.options.poll_seconds):
            self.registry.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._rest is not None:
            self._rest.stop()
            self._rest = None
        if self._grpc is not None:
            self._grpc.stop(STOP_GRACE_S).wait()
            self._grpc = None
        if self._poller is not None:
            self._poller.join(timeout=30)
            self._poller = None

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_until_available(self, name: str, version: int | None = None, *, timeout: float = 60.0) -> None:
        """Blocks until `name` (or that version) is AVAILABLE.

        Raises:
            TimeoutError: it was not, within `timeout` seconds (the message has its status).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                rows = self.registry.status(name, version)
                if any(r.state is State.AVAILABLE for r in rows):
                    return
            except Exception:  # noqa: BLE001 - NOT_FOUND until the first poll saw it
                rows = []
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {name!r} version {version} not available after {timeout} s: {rows}")
            time.sleep(0.05)

    def serve_until_signalled(self) -> None:
        """Runs until SIGINT (Ctrl-C) or SIGTERM, then stops cleanly."""
        stop = threading.Event()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerProcess:
    """`seqexport serve` running in a child process (see `server_process`)."""

    process: subprocess.Popen
    grpc_target: str
    rest_url: str
    models: dict
    stderr_tail: collections.deque

    def stderr_text(self) -> str:
        return "".join(self.stderr_tail)


@contextlib.contextmanager
def server_process(base: Path, *args: str, startup_timeout: float = 120.0) -> Iterator[ServerProcess]:
    """Runs `seqexport serve BASE --grpc-port 0 --rest-port 0 --json ARGS` in a child process.

    Yields once the server has bound its ports and made its first poll; stops
    it with SIGTERM on exit (SIGKILL if it does not stop in time). For tests,
    benchmarks and scripts: a server in its own process shares no GIL with its clients.

    Raises:
        RuntimeError: the server did not start (its stderr is in the message).
    """
    command = [sys.executable, "-m", "exporter.cli.app", "serve", str(base), "--grpc-port", "0",
               "--rest-port", "0", "--json", *args]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Drained all along: a full stderr pipe would block the server.
    tail: collections.deque = collections.deque(maxlen=200)
    drain = threading.Thread(target=lambda: tail.extend(process.stderr), daemon=True)
    drain.start()
    try:
        ready, _, _ = select.select([process.stdout], [], [], startup_timeout)
        line = process.stdout.readline() if ready else ""
        if not line:
            process.kill()
            drain.join(timeout=10)
            raise RuntimeError(f"seqexport serve did not start: {''.join(tail)[-3000:]}")
        info = json.loads(line)
        host = _url_host(info["host"])
        yield ServerProcess(process=process, grpc_target=f"{host}:{info['grpc_port']}",
                            rest_url=f"http://{host}:{info['rest_port']}", models=info["models"],
                            stderr_tail=tail)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        drain.join(timeout=10)
        process.stdout.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
