"""Per-chunk latency of `stream` (B=1) over gRPC and REST on loopback, in-process, and through Triton.

    python scripts/latency.py [BASE [NAME]]      (this module's `main`)

Serves BASE (default: the demo model, trained for a few seconds and exported
into a temporary folder) with `seqexport serve` in a child process on
127.0.0.1, then times `StreamingSession.feed` for chunks of 1 and 16 steps:
through `GrpcClient`, `RestClient` and `SavedModelBackend` (no server). Where
`nvidia-pytriton` is installed, the version is also converted to a Triton
Python-backend repository (`convert --to triton --backend python`) and served
by the real `tritonserver` on 127.0.0.1: one request per chunk, the state kept
on the server per correlation id, over gRPC and HTTP (`triton-grpc`,
`triton-http`). All transports interleave in rounds so that drifting machine
load hits them alike.
Prints p50/p99 per chunk, the ratio of each transport's p50 to in-process,
and the same as one JSON line. Bounded: a fixed number of calls, loopback only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from exporter.artifact.paths import version_folders
from exporter.convert.targets import convert_export
from exporter.convert.triton_server import SequenceClient, TritonServer
from exporter.tools.demo import train_demo_model
from serving.client import GrpcClient, RestClient, SavedModelBackend
from serving.server.server import server_process
from serving.session import StreamingSession

CHUNK_STEPS = (1, 16)
ROUNDS = 5
CALLS_PER_ROUND = 40  # per transport and chunk size: 200 timed calls each
WARMUP_CALLS = 10
BATCH = 1


def _demo_base(folder: Path) -> tuple[Path, str]:
    from exporter.pipeline import export

    model_file = train_demo_model(folder / "demo.keras", seconds=2.0)
    export(str(model_file), name="demo", base=folder / "models")
    return folder / "models", "demo"


def _time_calls(session, chunk: np.ndarray, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        session.feed(chunk)
        times.append(time.perf_counter() - started)
    return times


class _TritonSession:
    """`feed(chunk)` as one request of one Triton sequence (started by the first call)."""

    def __init__(self, client, model: str, sequence_id: int):
        self.client, self.model, self.sequence_id, self.started = client, model, sequence_id, False

    def feed(self, chunk: np.ndarray):
        out = self.client.infer(self.model, chunk, sequence_id=self.sequence_id, start=not self.started)
        self.started = True
        return out["outputs"]


@contextlib.contextmanager
def _triton(version_dir: Path, name: str, scratch: Path, notes: list[str]):
    """`{transport: client}` for the Triton transports, or `{}` (with a note) when Triton is not installed."""
    if importlib.util.find_spec("pytriton") is None:
        notes.append("Triton not timed: nvidia-pytriton is not installed (pip install --no-deps nvidia-pytriton==0.7.0)")
        yield {}
        return

    repo = scratch / "triton-repo"
    report = convert_export(version_dir, "triton-python", repo, triton_name=name)
    if not report.passed:
        raise SystemExit(f"the Triton conversion failed: {report.summary()}")
    with TritonServer(repo) as server, SequenceClient("grpc", server.grpc_url) as grpc_client, \
            SequenceClient("http", server.http_url) as http_client:
        notes.append(f"tritonserver (nvidia-pytriton {server.files.version}) live in {server.start_seconds:.2f} s")
        yield {"triton-grpc": grpc_client, "triton-http": http_client}


def measure(base: Path, name: str, scratch: Path | None = None, notes: list[str] | None = None) -> dict:
    notes = [] if notes is None else notes
    folders = version_folders(base / name, loadable=True)
    version_dir = folders[max(folders)]
    local = SavedModelBackend(version_dir)
    features = local.served.views["stream"].inputs[local.keys.sequence].shape[2:]
    rng = np.random.default_rng(0)
    samples: dict[tuple[str, int], list[float]] = {}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(server_process(base, "--name", name))
        grpc_client = stack.enter_context(GrpcClient(server.grpc_target))
        rest_client = stack.enter_context(RestClient(server.rest_url))
        scratch = scratch or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        triton_clients = stack.enter_context(_triton(version_dir, name, scratch, notes))
        backends = {"grpc": grpc_client.backend(name), "rest": rest_client.backend(name), "in-process": local}
        for sequence_id, steps in enumerate(CHUNK_STEPS, start=1):
            chunk = rng.normal(size=(BATCH, steps, *features)).astype(np.float32)
            sessions = {k: StreamingSession(b, batch_size=BATCH) for k, b in backends.items()}
            sessions.update({k: _TritonSession(c, name, sequence_id) for k, c in triton_clients.items()})
            for session in sessions.values():
                _time_calls(session, chunk, WARMUP_CALLS)
            for round_index in range(ROUNDS):
                shift = round_index % len(sessions)
                order = list(sessions)[shift:] + list(sessions)[:shift]
                for kind in order:
                    samples.setdefault((kind, steps), []).extend(
                        _time_calls(sessions[kind], chunk, CALLS_PER_ROUND)
                    )
    results = {}
    for (kind, steps), times in samples.items():
        ms = np.asarray(times) * 1e3
        results[f"{kind}/T{steps}"] = {
            "transport": kind, "chunk_steps": steps, "calls": len(ms),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
        }
    for row in results.values():
        local_p50 = results[f"in-process/T{row['chunk_steps']}"]["p50_ms"]
        row["p50_vs_in_process"] = row["p50_ms"] / local_p50
    return results


def main() -> None:
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as scratch:
        if len(sys.argv) > 1:
            base, name = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "demo")
        else:
            with console.status("training and exporting the demo model"):
                base, name = _demo_base(Path(scratch))
        notes: list[str] = []
        with console.status("timing stream calls"):
            results = measure(base, name, Path(scratch), notes)
    table = Table(title=f"stream latency, B={BATCH}, loopback ({ROUNDS * CALLS_PER_ROUND} calls each)")
    for column in ("transport", "chunk steps", "p50 ms", "p99 ms", "p50 / in-process"):
        table.add_column(column, justify="right")
    for row in sorted(results.values(), key=lambda r: (r["chunk_steps"], r["transport"])):
        table.add_row(row["transport"], str(row["chunk_steps"]), f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}",
                      f"{row['p50_vs_in_process']:.2f}")
    Console().print(table)
    for note in notes:
        console.print(f"note: {note}")
    print(json.dumps({"latency": list(results.values()), "notes": notes}))
