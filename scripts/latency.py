"""Per-chunk latency of `stream` (B=1) over gRPC and REST on loopback, and the same call in-process.

    python scripts/latency.py [BASE [NAME]]

Serves BASE (default: the demo model, trained for a few seconds and exported
into a temporary folder) with `seqexport serve` in a child process on
127.0.0.1, then times `StreamingSession.feed` for chunks of 1 and 16 steps:
through `GrpcClient`, `RestClient` and `SavedModelBackend` (no server), the
three interleaved in rounds so that drifting machine load hits them alike.
Prints p50/p99 per chunk, the ratio of each transport's p50 to in-process,
and the same as one JSON line. Bounded: a fixed number of calls, loopback only.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

CHUNK_STEPS = (1, 16)
ROUNDS = 5
CALLS_PER_ROUND = 40  # per transport and chunk size: 200 timed calls each
WARMUP_CALLS = 10
BATCH = 1


def _demo_base(folder: Path) -> tuple[Path, str]:
    from exporter.demo import train_demo_model
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


def measure(base: Path, name: str) -> dict:
    from serving.client import GrpcClient, RestClient, SavedModelBackend
    from serving.model_registry import version_folders
    from serving.server import server_process
    from serving.session import StreamingSession

    version_dir = version_folders(base / name)[max(version_folders(base / name))]
    local = SavedModelBackend(version_dir)
    features = local.served.views["stream"].inputs[local.keys.sequence].shape[2:]
    rng = np.random.default_rng(0)
    samples: dict[tuple[str, int], list[float]] = {}
    with server_process(base, "--name", name) as server, GrpcClient(server.grpc_target) as grpc_client, \
            RestClient(server.rest_url) as rest_client:
        backends = {"grpc": grpc_client.backend(name), "rest": rest_client.backend(name), "in-process": local}
        for steps in CHUNK_STEPS:
            chunk = rng.normal(size=(BATCH, steps, *features)).astype(np.float32)
            sessions = {k: StreamingSession(b, batch_size=BATCH) for k, b in backends.items()}
            for session in sessions.values():
                _time_calls(session, chunk, WARMUP_CALLS)
            for round_index in range(ROUNDS):
                order = list(sessions)[round_index % 3 :] + list(sessions)[: round_index % 3]
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
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as scratch:
        if len(sys.argv) > 1:
            base, name = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "demo")
        else:
            with console.status("training and exporting the demo model"):
                base, name = _demo_base(Path(scratch))
        with console.status("timing stream calls"):
            results = measure(base, name)
    table = Table(title=f"stream latency, B={BATCH}, loopback ({ROUNDS * CALLS_PER_ROUND} calls each)")
    for column in ("transport", "chunk steps", "p50 ms", "p99 ms", "p50 / in-process"):
        table.add_column(column, justify="right")
    for row in sorted(results.values(), key=lambda r: (r["chunk_steps"], r["transport"])):
        table.add_row(row["transport"], str(row["chunk_steps"]), f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}",
                      f"{row['p50_vs_in_process']:.2f}")
    Console().print(table)
    print(json.dumps({"latency": list(results.values())}))


if __name__ == "__main__":
    main()
