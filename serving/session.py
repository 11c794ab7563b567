"""Client-side state carry: feed a sequence chunk by chunk, keep the state with the client.

The state lives in the session, not in the server, so any replica behind a load
balancer can serve any chunk, and a session can be saved, moved to another
process and resumed. A `Backend` is whatever runs the export's `initial_state`
and `stream` signatures: TF Serving over gRPC or REST, the in-process SavedModel,
or another runtime (LiteRT, ONNX Runtime) driving the `step` model.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    """Runs one export's signatures; arrays in, arrays out."""

    def initial_state(self, batch_size: int) -> dict[str, np.ndarray]:
        """Zero state for `batch_size` sequences, keyed by state name."""

    def stream(
        self, inputs: np.ndarray, states: Mapping[str, np.ndarray], lengths: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Runs `inputs [B, T, ...]` from `states`; returns (outputs [B, T, ...], new states)."""


class StreamingSession:
    """A batch of sequences fed chunk by chunk, its state carried between calls.

    Example:
        >>> session = StreamingSession(backend, batch_size=1)
        >>> for chunk in chunks:
        ...     outputs = session.feed(chunk)
        >>> blob = session.save()          # move to another process or replica
        >>> session = StreamingSession.restore(blob, backend)
    """

    def __init__(self, backend: Backend, batch_size: int, states: Mapping[str, np.ndarray] | None = None):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive. Got: {batch_size}")
        self.backend = backend
        self.batch_size = batch_size
        self.steps_seen = 0
        self.states = dict(states) if states is not None else backend.initial_state(batch_size)

    def feed(self, chunk: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Runs one chunk `[B, T, ...]` from the carried state; returns its outputs."""
        chunk = np.asarray(chunk)
        if chunk.shape[0] != self.batch_size:
            raise ValueError(
                f"chunk batch size {chunk.shape[0]} != session batch size {self.batch_size}"
            )
        outputs, self.states = self.backend.stream(chunk, self.states, lengths)
        self.steps_seen += chunk.shape[1]
        return outputs

    def reset(self) -> None:
        self.states = self.backend.initial_state(self.batch_size)
        self.steps_seen = 0

    def save(self) -> bytes:
        """The session's state as bytes (npz with a JSON header), to resume elsewhere."""
        buffer = io.BytesIO()
        header = json.dumps({"batch_size": self.batch_size, "steps_seen": self.steps_seen})
        np.savez(buffer, __header__=np.frombuffer(header.encode(), dtype=np.uint8),
                 **{f"state/{k}": v for k, v in self.states.items()})
        return buffer.getvalue()

    @classmethod
    def restore(cls, blob: bytes, backend: Backend) -> "StreamingSession":
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            header = json.loads(data["__header__"].tobytes().decode())
            states = {k[len("state/"):]: data[k] for k in data.files if k.startswith("state/")}
        session = cls(backend, header["batch_size"], states=states)
        session.steps_seen = header["steps_seen"]
        return session
