"""Client-side state carry: feed a sequence chunk by chunk, keep the state with the client.

The state lives in the session, not in the server, so any replica behind a load
balancer can serve any chunk, and a session can be saved, moved to another
process and resumed. A `Backend` is whatever runs the export's `initial_state`
and `stream` signatures: TF Serving over gRPC or REST, the in-process SavedModel,
or another runtime (LiteRT, ONNX Runtime) driving the `step` model. Exports with
several outputs give a dict of outputs by name; exports with static inputs take
them once per session (`statics=`); exports with several sequence inputs take the
others with each chunk (`feed(chunk, sequences=...)`).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from exporter.artifact.specs import check_sequence_chunk

# What `feed` and `Backend.stream` return: one array, or a dict by output name (several outputs).
Outputs = np.ndarray | dict[str, np.ndarray]


@runtime_checkable
class Backend(Protocol):
    """Runs one export's signatures; arrays in, arrays out.

    `statics` are the export's static inputs (`[B, K]`, no time axis) by name, `sequences` its
    sequence inputs beside `inputs` (`[B, T, ...]`, the chunk's `T`) by name. A session passes
    each only when it has some, so a backend of an export without them may leave the argument out.
    """

    def initial_state(
        self, batch_size: int, statics: Mapping[str, np.ndarray] | None = None,
        context: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """The state `batch_size` sequences start from (zeros, or what the static inputs set, or what an
        encoder computes from the `context` inputs), by state name."""

    def stream(
        self, inputs: np.ndarray, states: Mapping[str, np.ndarray], lengths: np.ndarray | None = None,
        statics: Mapping[str, np.ndarray] | None = None, sequences: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[Outputs, dict[str, np.ndarray]]:
        """Runs `inputs [B, T, ...]` from `states`; returns (outputs, new states).

        The outputs are one array `[B, T, ...]` for an export with one output, else a dict of them
        by output name (a last-step output too comes at every step, as `stream` returns it).
        """


def _check_names(kind: str, names, given: Mapping, how: str, beside: str = "") -> None:
    """Raises ValueError naming the `kind` inputs missing from `given` (`how` to pass them, its `{}`
    filled with their names) or unknown to the export."""
    missing, unknown = sorted(set(names) - set(given)), sorted(set(given) - set(names))
    if missing:
        example = ", ".join(repr(n) + ": ..." for n in missing)
        raise ValueError(f"this export takes the {kind} input(s) {missing} " + how.format(example))
    if unknown:
        raise ValueError(f"unknown {kind} input(s) {unknown}; this export takes {sorted(names) or 'none'}{beside}.")


def static_feed(names, statics: Mapping[str, np.ndarray] | None, dtypes: Mapping[str, np.dtype],
                batch_size: int) -> dict[str, np.ndarray]:
    """`statics` checked against the export's static input `names` and cast to their dtypes.

    Raises ValueError naming what is missing, unknown or batched differently.
    """
    statics = dict(statics or {})
    _check_names("static", names, statics, "with every call; pass them once to the session: "
                 "StreamingSession(backend, batch_size, statics={{{}}}).")
    feed = {}
    for name in names:
        array = np.asarray(statics[name], dtype=dtypes[name])
        if array.ndim == 0 or array.shape[0] != batch_size:
            raise ValueError(
                f"static input {name!r} has shape {list(array.shape)}; it needs the batch size {batch_size} first."
            )
        feed[name] = array
    return feed


def context_feed(names, context: Mapping[str, np.ndarray] | None, dtypes: Mapping[str, np.dtype],
                 batch_size: int) -> dict[str, np.ndarray]:
    """`context` checked against the export's context input `names` (an encoder's `[B, S, ...]`) and
    cast to their dtypes. Raises ValueError naming what is missing, unknown or batched differently."""
    context = dict(context or {})
    _check_names("context", names, context, "once per sequence, to `initial_state`; pass them to the session: "
                 "StreamingSession(backend, batch_size, context={{{}}}).")
    feed = {name: np.asarray(context[name], dtype=dtypes[name]) for name in names}
    for name, array in feed.items():
        if array.ndim < 2 or array.shape[0] != batch_size:
            raise ValueError(f"context input {name!r} has shape {list(array.shape)}; it needs the batch size "
                             f"{batch_size} first, then its own steps.")
    return feed


def sequence_feed(names, sequences: Mapping[str, np.ndarray] | None, dtypes: Mapping[str, np.dtype],
                  chunk_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """`sequences` checked against the export's other sequence input `names` and cast to their dtypes.

    Each must have the chunk's batch size and steps (`chunk_shape[:2]`, axes 0 and 1).

    Raises ValueError naming what is missing, unknown or shaped differently.
    """
    sequences = dict(sequences or {})
    _check_names("sequence", names, sequences, "beside `inputs`, the same steps with every chunk; pass them to "
                 "feed: session.feed(chunk, sequences={{{}}}).", beside=" beside `inputs`")
    feed = {name: np.asarray(sequences[name], dtype=dtypes[name]) for name in names}
    for name, array in feed.items():
        check_sequence_chunk(name, array, chunk_shape)
    return feed


# A session whose states pass this many bytes gets a note: its requests carry them both ways.
LARGE_STATE_BYTES = 2**20


class StreamingSession:
    """A batch of sequences fed chunk by chunk, its state carried between calls.

    An export with static inputs (inputs without a time axis, such as per-sequence features)
    takes them ONCE per session, `statics={name: [B, K] array}`: the session passes them to
    `initial_state` and to every `stream` call, and keeps them in `save()`. To stream other
    static values, start another session. An export with several sequence inputs takes the
    others with EACH chunk, `feed(chunk, sequences={name: [B, T, ...] array})`, `T` the chunk's.
    An encoder-decoder export takes its context inputs (the source sequence) ONCE per session,
    `context={name: [B, S, ...] array}`: `initial_state` encodes them, the states carry the rest.

    Example:
        >>> session = StreamingSession(backend, batch_size=1)
        >>> for chunk in chunks:
        ...     outputs = session.feed(chunk)   # an array; a dict by name for several outputs
        >>> blob = session.save()          # move to another process or replica
        >>> session = StreamingSession.restore(blob, backend)
    """

    def __init__(self, backend: Backend, batch_size: int, states: Mapping[str, np.ndarray] | None = None, *,
                 statics: Mapping[str, np.ndarray] | None = None, context: Mapping[str, np.ndarray] | None = None):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive. Got: {batch_size}")
        self.backend = backend
        self.batch_size = batch_size
        self.steps_seen = 0
        self.statics = {k: np.asarray(v) for k, v in (statics or {}).items()}
        for name, array in self.statics.items():
            if array.ndim == 0 or array.shape[0] != batch_size:
                raise ValueError(f"static input {name!r} has shape {list(array.shape)}; "
                                 f"it needs the session batch size {batch_size} first.")
        self.context = {k: np.asarray(v) for k, v in (context or {}).items()}
        self.states = dict(states) if states is not None else self._initial_state()
        if self.state_bytes > LARGE_STATE_BYTES:
            warnings.warn(f"{self}: each request sends these states and gets them back; past "
                          f"{LARGE_STATE_BYTES // 2**20} MiB (a long key/value cache) keep the state server-side "
                          "instead (Triton's sequence batcher, `convert --to triton`)", stacklevel=2)

    @property
    def state_bytes(self) -> int:
        """Bytes of the states the session carries (a key/value cache included): what each request sends."""
        return sum(np.asarray(v).nbytes for v in self.states.values())

    def __repr__(self) -> str:
        return (f"StreamingSession(batch_size={self.batch_size}, steps_seen={self.steps_seen}, "
                f"{len(self.states)} states of {self.state_bytes:,} bytes)")

    def _static_kwargs(self) -> dict:
        return {"statics": self.statics} if self.statics else {}

    def _initial_state(self) -> dict[str, np.ndarray]:
        context = {"context": self.context} if self.context else {}
        return self.backend.initial_state(self.batch_size, **self._static_kwargs(), **context)

    def feed(self, chunk: np.ndarray, lengths: np.ndarray | None = None, *,
             sequences: Mapping[str, np.ndarray] | None = None) -> Outputs:
        """Runs one chunk `[B, T, ...]` from the carried state; returns its outputs.

        Args:
            chunk: the chunk of `inputs` (the export's first sequence input).
            lengths: `[B]` steps of each row in this chunk (masked exports only).
            sequences: the same chunk (`[B, T, ...]`, the same `T`) of each other sequence input,
                by name; needed by an export with several sequence inputs, refused by others.

        Returns:
            One array `[B, T, ...]` for an export with one output, else a dict by output name.
        """
        chunk = np.asarray(chunk)
        if chunk.shape[0] != self.batch_size:
            raise ValueError(
                f"chunk batch size {chunk.shape[0]} != session batch size {self.batch_size}"
            )
        kwargs = self._static_kwargs()
        if sequences:
            kwargs["sequences"] = sequences
        outputs, self.states = self.backend.stream(chunk, self.states, lengths, **kwargs)
        self.steps_seen += chunk.shape[1]
        return outputs

    def generate(self, prompt: np.ndarray, max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
                 seed: int = 0) -> np.ndarray:
        """Continues each sequence from `prompt` for `max_new_tokens` steps in ONE call of the export's
        `generate` signature; the session then carries the state after the last new step, so `feed`
        goes on after what was generated.

        A fresh (or `reset`) session calls `generate` (from its static and context inputs); one that has
        streamed already calls `generate_from` with the states it carries.

        Args:
            prompt: `[B, P]` ids (`[B, P, F]` features for a feedback export), P >= 1.
            max_new_tokens: steps to generate (at most the export's bound).
            temperature, top_k, seed: sampling (ids only): 0 is greedy; `top_k` 0 keeps every id; a seed
                gives the same ids on every call and server.

        Returns:
            `[B, max_new_tokens]` ids (`[B, max_new_tokens, F]` predictions for a feedback export).
        """
        prompt = np.asarray(prompt)
        if prompt.ndim < 2 or prompt.shape[0] != self.batch_size:
            raise ValueError(f"prompt has shape {list(prompt.shape)}; it needs the session batch size "
                             f"{self.batch_size} first, then its steps.")
        start = ({"states": self.states} if self.steps_seen
                 else {"context": self.context} if self.context else {})
        produced, self.states = self.backend.generate(prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                                      seed=seed, **self._static_kwargs(), **start)
        self.steps_seen += prompt.shape[1] + produced.shape[1]
        return produced

    def reset(self) -> None:
        """Back to the initial state (from the same static and context inputs)."""
        self.states = self._initial_state()
        self.steps_seen = 0

    def save(self) -> bytes:
        """The session's state, static and context inputs as bytes (npz with a JSON header), to resume elsewhere."""
        buffer = io.BytesIO()
        header = json.dumps({"batch_size": self.batch_size, "steps_seen": self.steps_seen})
        np.savez(buffer, __header__=np.frombuffer(header.encode(), dtype=np.uint8),
                 **{f"state/{k}": v for k, v in self.states.items()},
                 **{f"static/{k}": v for k, v in self.statics.items()},
                 **{f"context/{k}": v for k, v in self.context.items()})
        return buffer.getvalue()

    @classmethod
    def restore(cls, blob: bytes, backend: Backend) -> "StreamingSession":
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            header = json.loads(data["__header__"].tobytes().decode())
            states = {k[len("state/"):]: data[k] for k in data.files if k.startswith("state/")}
            statics = {k[len("static/"):]: data[k] for k in data.files if k.startswith("static/")}
            context = {k[len("context/"):]: data[k] for k in data.files if k.startswith("context/")}
        session = cls(backend, header["batch_size"], states=states, statics=statics, context=context)
        session.steps_seen = header["steps_seen"]
        return session
