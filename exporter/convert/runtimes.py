"""Run a converted export in LiteRT or ONNX Runtime behind the `Backend` protocol.

`exporter.convert` turns an export's `step` signature (and, where the runtime
handles it well, the whole-sequence `stream`) into a `.tflite` or `.onnx` file.
This module loads such a file WITHOUT TensorFlow and offers:

- `LiteRTModel` / `OrtModel`: one model, called with a dict of arrays keyed like
  the export's signature (`x`, every state) and answering with the signature's
  output keys (`y`, every new state under the state's own name);
- `StepLoopBackend`: a `Backend` that runs a step model over a chunk in a Python
  loop, the state threaded through, so
  `StreamingSession(StepLoopBackend(LiteRTModel.load(path)), batch_size)` works
  exactly like a session on a TF Serving client;
- `SequenceBackend`: a `Backend` over a converted whole-sequence `stream` model.

Several outputs come back as a dict by name; static inputs are inputs of every converted
model (`static_names`), fed with every call, and a converted `initial_state` model passed as
`initial=` sets the states they start from. Other sequence inputs are inputs too; a backend
is told their names (`sequences=`, the manifest's `sequence_inputs`) and takes each chunk of
them with every `stream` call.

ONNX graphs cannot give an input and an output the same name, so a converted ONNX
model names each new state `<state>_next` (`state_output_name`); `OrtModel` maps
it back. Triton's implicit-state config relies on the same names.

Example:
    >>> from exporter.convert.runtimes import LiteRTModel, StepLoopBackend
    >>> from serving.session import StreamingSession
    >>> backend = StepLoopBackend(LiteRTModel.load("runtimes/tflite/step.tflite"))
    >>> session = StreamingSession(backend, batch_size=1)
    >>> outputs = session.feed(chunk)          # chunk [1, T, F]
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from exporter.artifact.specs import check_sequence_chunk

STATE_OUTPUT_SUFFIX = "_next"
# Keys of the export's signatures that are not states (exporter.trace).
NON_STATE_KEYS = frozenset({"x", "y", "inputs", "outputs", "lengths", "batch_size"})
# Triton's correlation-id control input (`exporter.convert.triton`): the model takes it and
# ignores it; a driver feeds zeros.
CORRELATION_ID = "CORRID"


def state_output_name(state: str) -> str:
    """Name of the output that carries `state`'s new value in a converted ONNX model."""
    return state + STATE_OUTPUT_SUFFIX


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorInfo:
    """Name, per-call shape (None = dynamic, batch first) and numpy dtype of one model tensor."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": str(np.dtype(self.dtype))}


class _Model(abc.ABC):
    """What `LiteRTModel` and `OrtModel` share: named inputs/outputs and state bookkeeping."""

    runtime = ""
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]

    @property
    def state_names(self) -> tuple[str, ...]:
        """The states this model takes and returns (an input and an output of one key), in input order."""
        return tuple(n for n in self.inputs if n in self.outputs and n not in NON_STATE_KEYS and n != CORRELATION_ID)

    @property
    def static_names(self) -> tuple[str, ...]:
        """The export's static inputs (no time axis) this model takes: inputs that are no state."""
        states = set(self.state_names)
        return tuple(n for n in self.inputs if n not in NON_STATE_KEYS and n not in states and n != CORRELATION_ID)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Its outputs that are no state, sorted: `("y",)`/`("outputs",)`, or each name of several outputs."""
        states = set(self.state_names)
        return tuple(sorted(n for n in self.outputs if n not in states))

    @property
    def static_batch(self) -> int | None:
        """The batch size the model was converted for, or None when any batch works."""
        first = next(iter(self.inputs.values()))
        return first.shape[0] if first.shape else None

    def zero_states(self, batch_size: int) -> dict[str, np.ndarray]:
        return {
            n: np.zeros((batch_size, *self.inputs[n].shape[1:]), dtype=self.inputs[n].dtype)
            for n in self.state_names
        }

    def check_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise ValueError(
                f"{self.runtime} model is missing input(s) {missing}. It takes {list(self.inputs)}; "
                "states are keyed by the export's state names (see the manifest)."
            )
        batch = self.static_batch
        if batch is not None:
            for name in self.inputs:
                got = np.shape(feed[name])[0] if np.ndim(feed[name]) else None
                if got != batch:
                    raise ValueError(
                        f"{self.runtime} model was converted for batch size {batch} (a static batch); "
                        f"input {name!r} has batch size {got}. Convert again with that batch size, "
                        "or use the step model, which takes any batch."
                    )

    @abc.abstractmethod
    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the model on `feed` (by input name); returns its outputs by name."""


class LiteRTModel(_Model):
    """A `.tflite` file from `exporter.convert`, run by the LiteRT interpreter.

    Uses the model's single SignatureDef for names, and the interpreter's tensors
    directly (`set_tensor`/`invoke`/`get_tensor`): it re-allocates only when the
    batch size changes, which keeps a per-step call in the microseconds.
    """

    runtime = "LiteRT"

    def __init__(self, model_content: bytes, *, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter  # optional dependency

        self._interpreter = Interpreter(model_content=model_content, num_threads=num_threads)
        signatures = self._interpreter.get_signature_list()
        if len(signatures) != 1:
            raise ValueError(
                f"expected a .tflite model with one signature (as exporter.convert writes); "
                f"this one has {sorted(signatures)}"
            )
        runner = self._interpreter.get_signature_runner(next(iter(signatures)))
        self._input_index = {n: d["index"] for n, d in runner.get_input_details().items()}
        self._output_index = {n: d["index"] for n, d in runner.get_output_details().items()}
        details = {d["index"]: d for d in self._interpreter.get_tensor_details()}
        self.inputs = {n: self._info(n, details[i]) for n, i in sorted(self._input_index.items())}
        self.outputs = {n: self._info(n, details[i]) for n, i in sorted(self._output_index.items())}
        self._shapes: dict[str, tuple[int, ...]] = {}

    @classmethod
    def load(cls, path: Path | str, *, num_threads: int | None = None) -> "LiteRTModel":
        return cls(Path(path).read_bytes(), num_threads=num_threads)

    @staticmethod
    def _info(name: str, detail: dict) -> TensorInfo:
        shape = tuple(None if int(d) < 0 else int(d) for d in detail["shape_signature"])
        return TensorInfo(name=name, shape=shape, dtype=np.dtype(detail["dtype"]))

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        interpreter = self._interpreter
        # asarray(order='C'), not ascontiguousarray, which makes a scalar (`batch_size`) 1-d.
        arrays = {n: np.asarray(feed[n], dtype=info.dtype, order="C") for n, info in self.inputs.items()}
        shapes = {n: a.shape for n, a in arrays.items()}
        if shapes != self._shapes:
            for name, shape in shapes.items():
                interpreter.resize_tensor_input(self._input_index[name], list(shape), strict=True)
            interpreter.allocate_tensors()
            self._shapes = shapes
        for name, array in arrays.items():
            interpreter.set_tensor(self._input_index[name], array)
        interpreter.invoke()
        return {n: interpreter.get_tensor(i) for n, i in self._output_index.items()}


class OrtModel(_Model):
    """A `.onnx` file from `exporter.convert`, run by ONNX Runtime on the CPU.

    Calls `InferenceSession.run` with numpy arrays: `run_with_ort_values` was 2-4x
    slower at batch 1 on this stack (see `exporter.tools.runtime_bench`).

    `spinning=False` stops ONNX Runtime's threads from spin-waiting after a call: they
    keep the cores busy for a while, which slows whatever runs next in the process (a
    TensorFlow call interleaved with one in `scripts/bench.py`: 0.59 -> 0.77 of Keras).
    """

    runtime = "ONNX Runtime"
    _DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int32)": np.int32,
               "tensor(int64)": np.int64, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(float16)": np.float16}

    def __init__(self, model_content: bytes, *, intra_op_threads: int = 0, spinning: bool = True):
        import onnxruntime as ort  # optional dependency

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model_content, options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: self._info(i.name, i) for i in self.session.get_inputs()}
        self._output_names = [o.name for o in self.session.get_outputs()]
        self.outputs = {
            self._signature_key(o.name): self._info(self._signature_key(o.name), o)
            for o in self.session.get_outputs()
        }
        self._keys = [self._signature_key(n) for n in self._output_names]

    @classmethod
    def load(cls, path: Path | str, *, intra_op_threads: int = 0, spinning: bool = True) -> "OrtModel":
        return cls(Path(path).read_bytes(), intra_op_threads=intra_op_threads, spinning=spinning)

    @staticmethod
    def _signature_key(name: str) -> str:
        return name[: -len(STATE_OUTPUT_SUFFIX)] if name.endswith(STATE_OUTPUT_SUFFIX) else name

    @classmethod
    def _info(cls, name: str, arg) -> TensorInfo:
        if arg.type not in cls._DTYPES:
            raise ValueError(f"ONNX tensor {arg.name!r} has type {arg.type}, which this driver does not feed")
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
        return TensorInfo(name=name, shape=shape, dtype=np.dtype(cls._DTYPES[arg.type]))

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {n: np.asarray(feed[n], dtype=info.dtype) for n, info in self.inputs.items() if n in feed}
        control = self.inputs.get(CORRELATION_ID)
        if control is not None and CORRELATION_ID not in arrays:
            batch = len(next(iter(arrays.values())))
            shape = [batch if d is None else d for d in control.shape]
            arrays[CORRELATION_ID] = np.zeros(shape, dtype=control.dtype)
        return dict(zip(self._keys, self.session.run(self._output_names, arrays)))


def load_model(path: Path | str) -> _Model:
    """`LiteRTModel` for a `.tflite` file, `OrtModel` for a `.onnx` file."""
    path = Path(path)
    if path.suffix == ".tflite":
        return LiteRTModel.load(path)
    if path.suffix == ".onnx":
        return OrtModel.load(path)
    raise ValueError(f"{str(path)!r}: expected a .tflite or .onnx file written by `seqexport convert`")


def _check_states(model: _Model, states: Mapping[str, np.ndarray]) -> None:
    missing = [n for n in model.state_names if n not in states]
    if missing:
        raise ValueError(f"states {missing} are missing; this model carries {list(model.state_names)}")


def _statics(model: _Model, statics: Mapping[str, np.ndarray] | None, sequences=()) -> dict[str, np.ndarray]:
    statics = dict(statics or {})
    names = set(model.static_names) - set(sequences)
    if set(statics) != names:
        raise ValueError(
            f"{model.runtime} model takes the static input(s) {sorted(names) or 'none'}; "
            f"got {sorted(statics) or 'none'}"
        )
    return {n: np.asarray(v) for n, v in statics.items()}


def _sequences(model: _Model, names, sequences: Mapping[str, np.ndarray] | None,
               chunk_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The other sequence inputs of one chunk, checked by name and against the chunk's `[B, T]`."""
    sequences = dict(sequences or {})
    if set(sequences) != set(names):
        raise ValueError(
            f"{model.runtime} model takes the sequence input(s) {sorted(names) or 'none'} beside `inputs`, "
            f"the chunk's steps of each; got {sorted(sequences) or 'none'}"
        )
    arrays = {n: np.asarray(v) for n, v in sequences.items()}
    for name, array in arrays.items():
        check_sequence_chunk(name, array, chunk_shape)
    return arrays


def _check_sequence_names(model: _Model, sequences) -> tuple[str, ...]:
    sequences = tuple(sequences)
    unknown = [n for n in sequences if n not in model.static_names]
    if unknown:
        raise ValueError(f"{model.runtime} model has no input(s) {unknown} (it takes {list(model.inputs)})")
    return sequences


def _initial(model: _Model, initial: _Model | None, batch_size: int, statics, sequences=(),
             context: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The states from the converted `initial_state` model, fed the static inputs and the context inputs
    (an encoder's, which the step model does not take); zeros without either."""
    feed = {**_statics(model, statics, sequences), **{n: np.asarray(v) for n, v in (context or {}).items()}}
    if initial is None or not feed:
        return model.zero_states(batch_size)
    result = initial({"batch_size": np.int32(batch_size), **feed})
    return {n: result[n] for n in model.state_names}


class StepLoopBackend:
    """A `Backend` over a converted step model: one call per time step, state threaded in Python.

    `lengths` (masked exports): a step at `t >= lengths[b]` is padding, as the export's `stream`
    takes it: the row's input there becomes `pad_value` (the manifest's `mask_pad_value`) and the
    step model's own masks decide, as Keras's do (a masked RNN holds its state; one called with
    `initial_state=`, which Keras does not mask, steps on). Outputs at those padded steps are
    zeros: Keras repeats the last valid output there, which a step model cannot know across
    chunk boundaries; mask them out (the parity checks compare valid steps only).

    An export with several outputs gives a dict of them by name (each `[B, T, ...]`). One with
    static inputs takes them as `statics` (fed at every step); `initial` is its converted
    `initial_state` model, which sets the states from them (zeros without it). One with several
    sequence inputs names the others in `sequences` (the manifest's `sequence_inputs`); `stream`
    then takes each chunk of them as `sequences` and feeds step t's slice of each at step t.
    """

    def __init__(self, model: _Model, initial: _Model | None = None, *, sequences=(), pad_value: float = 0.0):
        if "x" not in model.inputs or not model.output_names:
            raise ValueError(
                f"{model.runtime} model takes {list(model.inputs)} and returns {list(model.outputs)}; "
                "a step model takes `x` and returns `y` (convert the export's `step` signature)."
            )
        self.model = model
        self.initial = initial
        self.sequences = _check_sequence_names(model, sequences)
        self.pad_value = pad_value
        self._outputs = {n: model.outputs[n] for n in model.output_names}

    def initial_state(self, batch_size: int, statics: Mapping[str, np.ndarray] | None = None,
                      context: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        return _initial(self.model, self.initial, batch_size, statics, self.sequences, context)

    def stream(
        self, inputs: np.ndarray, states: Mapping[str, np.ndarray], lengths: np.ndarray | None = None,
        statics: Mapping[str, np.ndarray] | None = None, sequences: Mapping[str, np.ndarray] | None = None,
    ):
        model = self.model
        _check_states(model, states)
        fixed = _statics(model, statics, self.sequences)
        inputs = np.asarray(inputs)
        others = _sequences(model, self.sequences, sequences, inputs.shape)
        batch, steps = inputs.shape[:2]
        carried = {n: np.asarray(states[n]) for n in model.state_names}
        outputs = {n: np.zeros((batch, steps, *info.shape[1:]), dtype=info.dtype) for n, info in self._outputs.items()}
        lengths = None if lengths is None else np.asarray(lengths).reshape(batch)
        for t in range(steps):
            x_t, live = inputs[:, t], (None if lengths is None else lengths > t)
            if live is not None and not live.all():
                x_t = x_t.copy()
                x_t[~live] = self.pad_value  # padding, whatever the client sent there
            result = model({"x": x_t, **fixed, **{n: v[:, t] for n, v in others.items()}, **carried})
            for n in outputs:
                if live is None:
                    outputs[n][:, t] = result[n]
                else:
                    outputs[n][live, t] = result[n][live]
            carried = {n: result[n] for n in model.state_names}
        return (outputs["y"] if list(outputs) == ["y"] else outputs), carried


class SequenceBackend:
    """A `Backend` over a converted whole-sequence `stream` model: one call per chunk (see
    `StepLoopBackend` for several outputs, static inputs, other sequence inputs and `initial`)."""

    def __init__(self, model: _Model, initial: _Model | None = None, *, sequences=()):
        if "inputs" not in model.inputs or not model.output_names:
            raise ValueError(
                f"{model.runtime} model takes {list(model.inputs)}; a sequence model takes `inputs` "
                "(convert the export's `stream` signature)."
            )
        self.model = model
        self.initial = initial
        self.sequences = _check_sequence_names(model, sequences)

    @property
    def masked(self) -> bool:
        return "lengths" in self.model.inputs

    def initial_state(self, batch_size: int, statics: Mapping[str, np.ndarray] | None = None,
                      context: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        return _initial(self.model, self.initial, batch_size, statics, self.sequences, context)

    def stream(
        self, inputs: np.ndarray, states: Mapping[str, np.ndarray], lengths: np.ndarray | None = None,
        statics: Mapping[str, np.ndarray] | None = None, sequences: Mapping[str, np.ndarray] | None = None,
    ):
        _check_states(self.model, states)
        inputs = np.asarray(inputs)
        feed = {"inputs": inputs, **_statics(self.model, statics, self.sequences),
                **_sequences(self.model, self.sequences, sequences, inputs.shape),
                **{n: states[n] for n in self.model.state_names}}
        if self.masked:
            feed["lengths"] = (
                np.full(inputs.shape[0], inputs.shape[1], np.int32) if lengths is None else lengths
            )
        elif lengths is not None:
            raise ValueError("this model does not mask (its export takes no `lengths`)")
        self.model.check_feed(feed)
        result = self.model(feed)
        names = self.model.output_names
        outputs = result["outputs"] if list(names) == ["outputs"] else {n: result[n] for n in names}
        return outputs, {n: result[n] for n in self.model.state_names}
