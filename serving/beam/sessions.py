"""Streaming sessions on Apache Beam: each key's state lives in Beam's per-key state.

`StreamSessions(export_dir)` takes a `PCollection` of `(key, (seq_no, chunk))` and gives
`{"outputs": (key, (seq_no, outputs)), "dead_letter": (key, DeadLetter)}`. The state is the
export's explicit state (`initial_state`, then `stream`), so the runner (Flink, Spark,
Dataflow, or the in-process one) checkpoints, moves and restores it like any other value.

Element form:
    key: a string naming one sequence (a device, a user, a sensor).
    seq_no: that key's chunk number, counting from 0 (an int).
    chunk: the next steps `[T, F]` of the export's `inputs`; or, for an export with several
        sequence, static or context inputs, a dict by input key: the other sequence inputs
        `[T, ...]` with every chunk, and the static inputs `[K]` and context inputs `[S, ...]`
        with chunk 0 only (no batch axis anywhere: one key is one row).

Why shards: Beam's per-key state and timers are reachable only in `process` and `on_timer`,
for the key at hand (never in `finish_bundle`), so chunks of different keys meet in one
`stream` call only if they share a Beam key. Each key is hashed (CRC-32, stable across
workers and runs) to one of `num_shards` shard keys; a shard's state holds each of its keys'
states, the chunks waiting for a gap to fill and the next `seq_no`. With batching (only when
the manifest records that rows are batch independent), a ready chunk waits in its shard until
the watermark passes it or `max_batch_size` chunks are ready there; then one round takes the
next chunk of every ready key, equal lengths go through `stream` as one batch, and rounds
repeat until no key has a ready chunk. Without the proof, a key's ready chunks run on arrival,
one key per call. More shards spread the work wider; fewer give larger batches (each element
reads and writes its whole shard, so keep a shard to some hundreds of keys).

State is written back only after the `stream` call that advanced it; Beam commits state and
outputs of a bundle together, so a retried bundle neither applies a chunk twice nor loses one.
A key idle for `idle_timeout_s` (event time: no chunk with a later timestamp) is dropped by a
timer; its waiting chunks go to the dead letters (a gap that never filled). A later chunk of a
dropped key starts a new sequence at `seq_no` 0.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils import shared
from apache_beam.utils.timestamp import Duration, Timestamp

from exporter.artifact.manifest import read_manifest
from exporter.artifact.specs import SignatureName
from serving.client import SavedModelBackend

OUTPUTS = "outputs"
DEAD_LETTER = "dead_letter"
_SHARD = ReadModifyWriteStateSpec("shard", PickleCoder())
_WAKE = TimerSpec("wake", TimeDomain.WATERMARK)
# Rows per `stream` call and chunks applied, as Beam metrics (namespace "seqexport").
_BATCH_ROWS = beam.metrics.Metrics.distribution("seqexport", "stream_batch_rows")
_CHUNKS = beam.metrics.Metrics.counter("seqexport", "chunks_applied")


class Reason(str, enum.Enum):
    """Why an element went to the dead letters."""

    BAD_ELEMENT = "bad_element"  # not (key, (seq_no, chunk)), or the key is not a string
    BAD_CHUNK = "bad_chunk"  # wrong keys, shape or dtype for this export
    REPEATED_SEQ_NO = "repeated_seq_no"  # already applied, or already waiting
    GAP_NEVER_FILLED = "gap_never_filled"  # the key went idle with chunks still waiting
    MODEL_ERROR = "model_error"  # the export refused the chunk


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """An element not applied, and why; the key's state is as if it never came.

    Attributes:
        seq_no: the element's `seq_no` (as sent).
        reason: the kind of fault.
        detail: what was wrong, naming the input at fault.
    """

    seq_no: object
    reason: Reason
    detail: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamOptions:
    """How `StreamSessions` keeps and batches state.

    Attributes:
        idle_timeout_s: event-time seconds after a key's latest chunk before it is dropped.
        num_shards: how many Beam keys the sequence keys are spread over.
        batch_across_keys: None: batch when the manifest proves batch independence; False:
            never; True: require that proof (ValueError at setup without it).
        max_batch_size: most rows in one `stream` call; also how many ready chunks in a shard
            start a batch before the watermark does.
    """

    idle_timeout_s: float = 3600.0
    num_shards: int = 256
    batch_across_keys: bool | None = None
    max_batch_size: int = 256

    def __post_init__(self):
        if not self.idle_timeout_s > 0:
            raise ValueError(f"`idle_timeout_s` must be positive. Got: {self.idle_timeout_s}")
        if self.num_shards < 1:
            raise ValueError(f"`num_shards` must be positive. Got: {self.num_shards}")
        if self.max_batch_size < 1:
            raise ValueError(f"`max_batch_size` must be positive. Got: {self.max_batch_size}")


@dataclasses.dataclass
class _KeyState:
    """One key inside its shard's state (pickled with the shard)."""

    next_seq: int = 0
    states: dict[str, np.ndarray] | None = None  # no batch axis; None before chunk 0 is applied
    statics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    pending: dict[int, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)  # seq_no -> feed
    arrived: dict[int, int] = dataclasses.field(default_factory=dict)  # seq_no -> timestamp (micros)
    last_seen: int = 0  # micros, event time


def shard_of(key: str, num_shards: int) -> int:
    """The shard of `key`: CRC-32 of its UTF-8 bytes, the same on every worker and run."""
    return zlib.crc32(key.encode()) % num_shards


class _Route(beam.DoFn):
    """Checks the element's form; keys it by shard."""

    def __init__(self, num_shards: int):
        self._num_shards = num_shards

    def process(self, element):
        try:
            key, (seq_no, chunk) = element
        except (TypeError, ValueError):
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, (None, DeadLetter(
                seq_no=None, reason=Reason.BAD_ELEMENT, detail="an element must be (key, (seq_no, chunk))")))
            return
        if not isinstance(key, str):
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, (key, DeadLetter(
                seq_no=seq_no, reason=Reason.BAD_ELEMENT, detail=f"the key must be a str, got {type(key).__name__}")))
            return
        if isinstance(seq_no, bool) or not isinstance(seq_no, int | np.integer) or seq_no < 0:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, (key, DeadLetter(
                seq_no=seq_no, reason=Reason.BAD_ELEMENT, detail=f"`seq_no` must be an int >= 0, got {seq_no!r}")))
            return
        yield shard_of(key, self._num_shards), (key, int(seq_no), chunk)


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What one input of one key looks like: its shape without batch (None: any size) and dtype."""

    shape: tuple[int | None, ...]
    dtype: np.dtype


class _Model:
    """The loaded export and what checking a key's chunks needs; one per worker process."""

    def __init__(self, export_dir: str):
        self.backend = SavedModelBackend(Path(export_dir))
        self.keys = self.backend.keys
        self.manifest = self.backend.served.manifest
        views = self.backend.served.views
        stream, initial = views[SignatureName.STREAM.value], views[SignatureName.INITIAL_STATE.value]

        def shape(sig):
            return _Shape(tuple(sig.shape[1:]), np.dtype(sig.dtype))

        self.sequences = {k: shape(stream.inputs[k]) for k in (self.keys.sequence, *self.keys.sequences)}
        self.firsts = {k: shape(stream.inputs[k]) for k in self.keys.statics}
        self.firsts.update({k: shape(initial.inputs[k]) for k in self.keys.contexts})
        self.zero_states = None if self.firsts else self.backend.initial_state(1)


class StreamSessionsFn(beam.DoFn):
    """The stateful half of `StreamSessions`: one shard's keys, their states, buffers and idle timer."""

    def __init__(self, export_dir: str, options: StreamOptions, *, batch: bool):
        self._export_dir = str(export_dir)
        self._options = options
        self._batch = batch
        self._shared = shared.Shared()

    def setup(self):
        self._model = self._shared.acquire(lambda: _Model(self._export_dir), tag=self._export_dir)
        self._ttl = Duration(seconds=self._options.idle_timeout_s)

    def process(self, element, timestamp=beam.DoFn.TimestampParam, shard=beam.DoFn.StateParam(_SHARD),
                wake=beam.DoFn.TimerParam(_WAKE)):
        _, (key, seq_no, chunk) = element
        keys: dict[str, _KeyState] = shard.read() or {}
        state = keys.get(key) or _KeyState()
        try:
            feed = self._feed(chunk, first=seq_no == 0)
        except ValueError as exc:
            yield _dead(key, seq_no, Reason.BAD_CHUNK, str(exc))
            return
        if seq_no < state.next_seq or seq_no in state.pending:
            why = "was applied already" if seq_no < state.next_seq else "is already waiting for its turn"
            yield _dead(key, seq_no, Reason.REPEATED_SEQ_NO,
                        f"seq_no {seq_no} of key {key!r} {why} (next expected: {state.next_seq}); this copy is dropped")
            return
        state.pending[seq_no] = feed
        state.arrived[seq_no] = timestamp.micros
        state.last_seen = max(state.last_seen, timestamp.micros) if key in keys else timestamp.micros
        keys[key] = state
        if not self._batch:
            yield from self._apply(keys, [key])
        elif sum(k.next_seq in k.pending for k in keys.values()) >= self._options.max_batch_size:
            yield from self._apply(keys, list(keys))
        self._save(keys, shard, wake)

    @on_timer(_WAKE)
    def on_wake(self, fire=beam.DoFn.TimestampParam, shard=beam.DoFn.StateParam(_SHARD),
                wake=beam.DoFn.TimerParam(_WAKE)):
        keys: dict[str, _KeyState] = shard.read() or {}
        ready = [k for k, s in keys.items() if s.next_seq in s.pending and s.arrived[s.next_seq] <= fire.micros]
        yield from self._apply(keys, ready)
        for key in [k for k, s in keys.items() if s.last_seen + self._ttl.micros <= fire.micros]:
            state = keys.pop(key)
            for seq_no in sorted(state.pending):
                yield _dead(key, seq_no, Reason.GAP_NEVER_FILLED,
                            f"key {key!r} went idle waiting for seq_no {state.next_seq}; seq_no {seq_no} never ran")
        self._save(keys, shard, wake)

    def _save(self, keys: dict[str, _KeyState], shard, wake) -> None:
        if not keys:
            shard.clear()
            wake.clear()
            return
        shard.write(keys)
        due = min(s.last_seen for s in keys.values()) + self._ttl.micros
        if self._batch:
            waiting = [s.arrived[s.next_seq] for s in keys.values() if s.next_seq in s.pending]
            due = min([due, *waiting])
        wake.set(Timestamp(micros=due))

    def _feed(self, chunk, *, first: bool) -> dict[str, np.ndarray]:
        """`chunk` as a feed by input key, checked against the export (ValueError naming the input at fault)."""
        model = self._model
        given = dict(chunk) if isinstance(chunk, Mapping) else {model.keys.sequence: chunk}
        wanted = {**model.sequences, **(model.firsts if first else {})}
        missing, unknown = sorted(set(wanted) - set(given)), sorted(set(given) - set(wanted))
        if missing or unknown:
            later = "" if first or not set(unknown) & set(model.firsts) else " (static and context inputs ride with seq_no 0 only)"
            raise ValueError(f"chunk keys {sorted(given)} do not match: missing {missing}, unknown {unknown}{later}; "
                             f"this export takes {sorted(wanted)}")
        feed, steps = {}, None
        for name, spec in wanted.items():
            array = np.asarray(given[name])
            if array.dtype.kind != spec.dtype.kind or array.ndim != len(spec.shape) or any(
                    want is not None and got != want for got, want in zip(array.shape, spec.shape)):
                shape = ["T" if d is None and name in model.sequences and i == 0 else ("*" if d is None else d)
                         for i, d in enumerate(spec.shape)]
                raise ValueError(f"input {name!r} has shape {list(array.shape)} and dtype {array.dtype}; this export "
                                 f"takes shape {shape} of {spec.dtype} for one key (no batch axis)")
            if name in model.sequences:
                if steps is not None and array.shape[0] != steps:
                    raise ValueError(f"sequence input {name!r} has {array.shape[0]} steps; `inputs` has {steps}")
                steps = array.shape[0]
            feed[name] = array.astype(spec.dtype, copy=False)
        if steps == 0:
            raise ValueError(f"the chunk of input {model.keys.sequence!r} has no steps")
        return feed

    def _apply(self, keys: dict[str, _KeyState], candidates: list[str]) -> Iterable:
        """Applies every ready chunk of `candidates`, in seq_no order, batched by length when allowed."""
        candidates = list(candidates)
        while True:
            ready = [k for k in candidates if keys[k].next_seq in keys[k].pending]
            if not ready:
                return
            groups: dict[int, list[str]] = {}
            for key in ready:
                steps = keys[key].pending[keys[key].next_seq][self._model.keys.sequence].shape[0]
                groups.setdefault(steps if self._batch else len(groups), []).append(key)
            for group in groups.values():
                for start in range(0, len(group), self._options.max_batch_size):
                    yield from self._run(keys, group[start : start + self._options.max_batch_size])

    def _run(self, keys: dict[str, _KeyState], group: list[str]) -> Iterable:
        """One `stream` call over the next chunk of each key of `group` (equal lengths); a failing
        batch is run again key by key, so only the chunk at fault goes to the dead letters."""
        model = self._model
        try:
            feeds = [keys[k].pending[keys[k].next_seq] for k in group]
            starts = [self._start(keys[k], feed) for k, feed in zip(group, feeds)]
            stack = lambda rows, name: np.stack([row[name] for row in rows])  # noqa: E731
            statics = {name: stack([keys[k].statics for k in group], name) for name in model.keys.statics}
            outputs, states = model.backend.stream(
                stack(feeds, model.keys.sequence), {name: stack(starts, name) for name in model.keys.states},
                statics=statics or None,
                sequences={name: stack(feeds, name) for name in model.keys.sequences} or None)
        except Exception as exc:  # noqa: BLE001 - any failure of the export is the chunk's, not the pipeline's
            if len(group) > 1:
                for key in group:
                    yield from self._run(keys, [key])
                return
            state = keys[group[0]]
            state.pending.pop(state.next_seq)
            state.arrived.pop(state.next_seq)
            yield _dead(group[0], state.next_seq, Reason.MODEL_ERROR, f"{type(exc).__name__}: {exc}"[:600])
            return
        _BATCH_ROWS.update(len(group))
        _CHUNKS.inc(len(group))
        for row, key in enumerate(group):
            state = keys[key]
            state.states = {name: value[row] for name, value in states.items()}
            seq_no = state.next_seq
            del state.pending[seq_no], state.arrived[seq_no]
            state.next_seq += 1
            out = {n: v[row] for n, v in outputs.items()} if isinstance(outputs, dict) else outputs[row]
            yield key, (seq_no, out)

    def _start(self, state: _KeyState, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The key's states before this chunk: its carried states, or the export's initial state at seq_no 0."""
        if state.states is not None:
            return state.states
        model = self._model
        if model.zero_states is not None:
            return {name: value[0] for name, value in model.zero_states.items()}
        state.statics = {name: feed[name] for name in model.keys.statics}
        initial = model.backend.initial_state(
            1, statics={n: v[None] for n, v in state.statics.items()} or None,
            context={n: feed[n][None] for n in model.keys.contexts} or None)
        return {name: value[0] for name, value in initial.items()}


def _dead(key, seq_no, reason: Reason, detail: str):
    return beam.pvalue.TaggedOutput(DEAD_LETTER, (key, DeadLetter(seq_no=seq_no, reason=reason, detail=detail)))


class StreamSessions(beam.PTransform):
    """Streams each key's chunks through a seqexport export, the key's state kept by Beam.

    Args:
        export_dir: a version folder (`BASE/NAME/VERSION`) of a streaming export.
        idle_timeout_s, num_shards, batch_across_keys, max_batch_size: see `StreamOptions`.

    Returns (from `expand`):
        `{"outputs": PCollection of (key, (seq_no, outputs)), "dead_letter": PCollection of
        (key, DeadLetter)}`; `outputs` is `[T, O]`, or a dict of them by output name.

    Example:
        >>> result = chunks | StreamSessions("models/demo/3", idle_timeout_s=600)
        >>> result["outputs"] | beam.Map(print)
        >>> result["dead_letter"] | beam.Map(log_rejected)
    """

    fn_class = StreamSessionsFn

    def __init__(self, export_dir, **options):
        super().__init__()
        self._export_dir = str(export_dir)
        self._options = StreamOptions(**options)
        manifest = read_manifest(Path(export_dir))
        if not manifest.streams:
            raise ValueError(f"{self._export_dir!r} is a whole-sequence export ({manifest.whole_sequence}); it has no "
                             "state to stream. Score whole sequences with RunInference(SeqExportModelHandler(...)).")
        proven = manifest.batch_independent is True
        if self._options.batch_across_keys and not proven:
            raise ValueError(f"batch_across_keys=True, but the manifest of {self._export_dir!r} does not record batch "
                             f"independence (batch_independent: {manifest.batch_independent}); re-export it verified, "
                             "or leave batch_across_keys unset.")
        self.batch = proven and self._options.batch_across_keys is not False

    def expand(self, pcoll):
        # Type hints said outright: Beam's inference sees the tagged dead letters among the outputs.
        route = beam.ParDo(_Route(self._options.num_shards)).with_output_types(tuple[int, typing.Any])
        routed = pcoll | "Route" >> route.with_outputs(DEAD_LETTER, main="ok")
        stream = beam.ParDo(self.fn_class(self._export_dir, self._options, batch=self.batch))
        applied = routed.ok | "Stream" >> stream.with_output_types(tuple[str, typing.Any]).with_outputs(
            DEAD_LETTER, main=OUTPUTS)
        dead = (routed[DEAD_LETTER], applied[DEAD_LETTER]) | "DeadLetters" >> beam.Flatten()
        return {OUTPUTS: applied[OUTPUTS], DEAD_LETTER: dead}
