"""Scale of `serving.beam.StreamSessions` on Beam's in-process runner against the session client.

For each key count, every key streams `chunks_per_key` chunks of `steps` steps of the demo
export: once as a Beam pipeline (shuffled elements, state in Beam, batched across keys when the
manifest allows) and once through `StreamingSession` over gRPC to `seqexport serve` in a child
process (one session per key, B = 1). Both run in this process, interleaved, medians of
`repeats`; the client streams at most `client_keys` keys (its cost per chunk does not depend on
how many keys exist), the pipeline all of them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.artifact.manifest import read_manifest
from serving.client import GrpcClient
from serving.server.server import server_process
from serving.session import StreamingSession
from exporter.tools.timing import interleaved_medians


@dataclasses.dataclass(frozen=True, kw_only=True)
class BeamBenchConfig:
    """Attributes:
        keys: key counts to run.
        chunks_per_key: chunks each key streams.
        steps: steps per chunk.
        num_shards: `StreamSessions(num_shards=...)`.
        client_keys: most keys the session client streams per repeat.
        repeats: timed repeats of each (medians).
    """

    keys: tuple[int, ...] = (100, 1_000, 10_000)
    chunks_per_key: int = 2
    steps: int = 8
    num_shards: int = 64
    client_keys: int = 1_000
    repeats: int = 3

    def __post_init__(self):
        if not self.keys or min(self.keys) < 1:
            raise ValueError(f"`keys` must be positive counts. Got: {self.keys}")
        if self.chunks_per_key < 1 or self.steps < 1 or self.repeats < 1 or self.client_keys < 1:
            raise ValueError(f"`chunks_per_key`, `steps`, `repeats` and `client_keys` must be positive. Got: {self}")

    @classmethod
    def quick(cls) -> "BeamBenchConfig":
        return cls(keys=(100, 1_000), chunks_per_key=2, client_keys=200, repeats=1)


def state_bytes_per_key(export_dir: Path) -> int:
    """Bytes of one key's states, from the manifest's state specs."""
    return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in read_manifest(export_dir).states)


def _elements(n_keys: int, config: BeamBenchConfig, features: int, rng) -> list:
    x = rng.normal(size=(n_keys, config.chunks_per_key, config.steps, features)).astype("float32")
    elements = [(f"key-{k}", (c, x[k, c])) for k in range(n_keys) for c in range(config.chunks_per_key)]
    rng.shuffle(elements)
    return elements


def _pipeline_run(export_dir: Path, elements: list, num_shards: int) -> Callable[[], float]:
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from serving.beam import DEAD_LETTER, OUTPUTS, StreamSessions

    def run() -> float:
        started = time.perf_counter()
        pipeline = beam.Pipeline(runner=FnApiRunner())
        result = pipeline | beam.Create(elements, reshuffle=False) | StreamSessions(export_dir, num_shards=num_shards)
        counts = (result[OUTPUTS], result[DEAD_LETTER]) | beam.Flatten() | beam.combiners.Count.Globally()
        counts | beam.Map(lambda n, want=len(elements): _check_count(n, want))
        pipeline.run().wait_until_finish()
        return time.perf_counter() - started

    return run


def _check_count(got: int, want: int) -> None:
    if got != want:
        raise RuntimeError(f"the pipeline gave {got} outputs and dead letters for {want} chunks")


def _client_run(target: str, elements: list, n_keys: int) -> Callable[[], float]:
    ordered = sorted(elements, key=lambda e: (e[0], e[1][0]))[: n_keys * (len(elements) // max(1, len(
        {e[0] for e in elements})))]

    def run() -> float:
        with GrpcClient(target) as client:
            backend = client.backend("demo")
            started = time.perf_counter()
            sessions: dict[str, StreamingSession] = {}
            for key, (_, chunk) in ordered:
                session = sessions.get(key) or sessions.setdefault(key, StreamingSession(backend, batch_size=1))
                session.feed(chunk[None])
            return time.perf_counter() - started

    return run


def run(config: BeamBenchConfig, base: Path, name: str = "demo",
        progress: Callable[[str], None] = lambda _: None) -> list[dict]:
    """One row per key count: chunks/s and keys/s of the pipeline and of the client, their ratio."""
    export_dir = max((p for p in (base / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    manifest = read_manifest(export_dir)
    features = next(s for s in manifest.signature("stream").inputs if s.name == "inputs").shape[-1]
    per_key = state_bytes_per_key(export_dir)
    rng = np.random.default_rng(0)
    rows = []
    with server_process(base) as server:
        for n_keys in config.keys:
            progress(f"beam: {n_keys} keys")
            elements = _elements(n_keys, config, features, rng)
            client_keys = min(n_keys, config.client_keys)
            repeats = config.repeats if n_keys < 10_000 else 1
            times = interleaved_medians({"beam": _pipeline_run(export_dir, elements, config.num_shards),
                                         "client": _client_run(server.grpc_target, elements, client_keys)},
                                        repeats=repeats, warmup=0 if n_keys >= 10_000 else 1)
            chunks = len(elements)
            client_chunks = client_keys * config.chunks_per_key
            rows.append({
                "keys": n_keys, "chunks": chunks, "steps": config.steps, "state_bytes_per_key": per_key,
                "state_mb": per_key * n_keys / 1e6, "repeats": repeats,
                "beam_s": times["beam"], "beam_chunks_per_s": chunks / times["beam"],
                "beam_keys_per_s": n_keys / times["beam"],
                "client_keys": client_keys, "client_s": times["client"],
                "client_chunks_per_s": client_chunks / times["client"],
                "client_keys_per_s": client_keys / times["client"],
                "beam_s_per_10k_chunks": times["beam"] / chunks * 10_000,
                "client_s_per_10k_chunks": times["client"] / client_chunks * 10_000,
            })
            rows[-1]["ratio_vs_client"] = rows[-1]["beam_chunks_per_s"] / rows[-1]["client_chunks_per_s"]
    return rows
