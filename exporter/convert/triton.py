"""A Triton Inference Server model repository for an export, state kept on the server.

Two backends (`Backend`): `onnxruntime` (the default, for the official Triton
container: implicit state) and `python` (state kept by the repository's own
`model.py`, for any Triton with the Python backend, `pytriton`'s included).

onnxruntime
-----------

Triton's sequence batcher can hold a sequence's state between requests
("implicit state"), but only for its ONNX Runtime, TensorRT and PyTorch backends,
not for TF SavedModels. The export's ONNX step model is the bridge:

    REPO/NAME/VERSION/model.onnx     the `step` signature (x, *states -> y, *states_next)
    REPO/NAME/config.pbtxt           a `ModelConfig` (tritonclient's model_config_pb2)

The config lists `x` and `y` as the model's input and output (an export with several
outputs: each output by its `step` name, with its dims and data type), and one
`sequence_batching.state` entry per state mapping its input to its `<state>_next`
output, zero-initialised at the start of each sequence. A client sends one step
per request with a correlation id (`sequence_id`) and the `sequence_start` /
`sequence_end` flags; Triton routes every request of a sequence to the state it
keeps for that id (`Direct`: one batch slot per sequence; `Oldest`: dynamic
batching of the oldest sequences) and drops a sequence idle for longer than
`max_sequence_idle_microseconds`. The config also declares the correlation id as a
`CONTROL_SEQUENCE_CORRID` control input (`TYPE_UINT64`): Triton requires the model to
have that input, so the repository's `model.onnx` gets an extra `CORRID` input
`[batch, 1]` that no node reads (`TritonOptions.correlation_id=False` leaves it out).

Start Triton on the repository with
`tritonserver --model-repository=REPO` (the binary of the official container image).

python
------

Triton's Python backend has no implicit state (its `libtriton_python.so` has no
`TRITONBACKEND_State*` call), so the repository holds a model that keeps it:

    REPO/NAME/VERSION/model.py       `exporter/convert/triton_model.py`: one state per correlation id
    REPO/NAME/VERSION/step.onnx      the `step` signature, weights frozen
    REPO/NAME/VERSION/initial_state.onnx  static-input exports: the `initial_state` signature
    REPO/NAME/config.pbtxt           `backend: "python"`, `sequence_batching` with the
                                     START / END / READY / CORRID controls and an idle timeout

A request is one chunk of one sequence, `inputs [1, T, F]`; the response holds
`outputs [1, T, O]` (several outputs: each by its own name, `chunk_outputs`) and every
state after the chunk. Static inputs are inputs of every request (`[1, K]`); START starts
the state from `initial_state.onnx` of them. The onnxruntime backend refuses static inputs:
Triton's implicit state starts from zeros or a data file only. `model.py` creates a
sequence's state (zeros, or `initial_state` of the static inputs) on START, drops it on END, after the idle timeout, and
past `max_sequences` live sequences (least recently used first); see its docstring. An export with
`generate` gets the optional input `max_new_tokens` and the output `tokens` (`predictions` for
features): the request's chunk, then that many greedy steps (`python_model_config`).

Whole-sequence exports
----------------------

An export that cannot stream (`manifest.whole_sequence`: a Bidirectional LSTM, an attention
classifier) has no state to keep, so its repositories have no sequence batcher: one request is
whole sequences, `inputs [B, T, F]` (and `lengths [B]` of a masked export), answered with
`outputs` (or each output by name), as its `serving_default` signature takes and answers them.

    onnxruntime  REPO/NAME/VERSION/model.onnx            the `serving_default` signature
    python       REPO/NAME/VERSION/{model.py,serving_default.onnx}   `model.py` runs it per request

`dynamic_batching` (onnxruntime only) is declared only when the export proved batch independence
(`manifest.batch_independent`), as `serving/serving_files.py` decides for TF Serving; Triton
concatenates the requests it batches on the batch dimension, so they must share T.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from exporter.artifact.errors import BadInput, ConversionFailed
from exporter.convert.runtimes import CORRELATION_ID, STATE_OUTPUT_SUFFIX, OrtModel, state_output_name

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"
START_COMMAND = "tritonserver --model-repository={repo}"
PYTHON_BACKEND = "python"
PYTHON_MODEL_FILE = "model.py"
PYTHON_STEP_FILE = "step.onnx"
PYTHON_INITIAL_FILE = "initial_state.onnx"  # the `initial_state` signature, for exports with static inputs
PYTHON_WHOLE_FILE = "serving_default.onnx"  # a whole-sequence export's `serving_default`
PYTHON_PARAMETER = "seqexport"  # `triton_model.PARAMETER`
# Tensor names of the Python-backend model: one chunk in, its outputs and every state out.
CHUNK_INPUT = "inputs"
CHUNK_OUTPUT = "outputs"
# Control inputs of the Python-backend model (`ModelSequenceBatching.Control` kinds).
START, END, READY = "START", "END", "READY"
# Python backend, exports with `generate`: the optional input that asks for N new steps after the chunk.
GENERATE_INPUT = "max_new_tokens"

_DATA_TYPES = {
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float64): "TYPE_FP64",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.uint64): "TYPE_UINT64",
    np.dtype(np.bool_): "TYPE_BOOL",
}


class Backend(str, enum.Enum):
    """Which Triton backend runs the repository's model."""

    ONNXRUNTIME = "onnxruntime"
    PYTHON = "python"


class Strategy(str, enum.Enum):
    """How the sequence batcher assigns sequences to batch slots."""

    DIRECT = "direct"
    OLDEST = "oldest"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TritonOptions:
    """Sequence-batcher settings of the generated `config.pbtxt`.

    Attributes:
        max_batch_size: sequences Triton may run in one call (one slot each); 0 turns
            batching off (every request one sequence, the batch dimension in `dims`).
        strategy: `Strategy.DIRECT` or `Strategy.OLDEST`.
        max_sequence_idle_microseconds: a sequence with no request for this long is
            ended and its state freed.
        max_queue_delay_microseconds: how long a batch may wait to fill up.
        correlation_id: declare the `CORRID` control input (uint64) and add it to the model
            (the Python backend always declares it: it keys the state).
        max_sequences: Python backend: most states `model.py` keeps at once.
    """

    max_batch_size: int = 8
    strategy: Strategy = Strategy.DIRECT
    max_sequence_idle_microseconds: int = 60_000_000
    max_queue_delay_microseconds: int = 0
    correlation_id: bool = True
    max_sequences: int = 1024

    def __post_init__(self):
        if self.max_sequences < 1:
            raise ValueError(f"`max_sequences` must be positive. Got: {self.max_sequences}")
        if self.max_batch_size < 0:
            raise ValueError(f"`max_batch_size` must be >= 0. Got: {self.max_batch_size}")
        if self.max_sequence_idle_microseconds < 1:
            raise ValueError(
                f"`max_sequence_idle_microseconds` must be positive. Got: {self.max_sequence_idle_microseconds}"
            )
        if self.max_queue_delay_microseconds < 0:
            raise ValueError(
                f"`max_queue_delay_microseconds` must be >= 0. Got: {self.max_queue_delay_microseconds}"
            )


def _sequence_batching(config, options):
    """The config's `sequence_batching`: idle timeout and scheduling strategy from `options`."""
    batching = config.sequence_batching
    batching.max_sequence_idle_microseconds = options.max_sequence_idle_microseconds
    if options.strategy is Strategy.DIRECT:
        batching.direct.max_queue_delay_microseconds = options.max_queue_delay_microseconds
    else:
        batching.oldest.max_candidate_sequences = max(1, options.max_batch_size)
        batching.oldest.max_queue_delay_microseconds = options.max_queue_delay_microseconds
    return batching


def data_type(dtype) -> str:
    """Triton's `DataType` name of a numpy dtype."""
    try:
        return _DATA_TYPES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"no Triton data type for {np.dtype(dtype)}; supported: {sorted(map(str, _DATA_TYPES))}") from None


def _dims(shape: tuple[int | None, ...], batched: bool) -> list[int]:
    dims = shape[1:] if batched else shape
    return [-1 if d is None else int(d) for d in dims]


def _model_dims(tensor) -> list[int]:
    """The dims the model sees of a config tensor: its `reshape` when it has one (a `[B]` tensor is
    declared `dims: [1]`, `reshape: {shape: []}`: Triton needs non-empty dims)."""
    return list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)


def _tensor(message, name: str, info, batched: bool):
    """A `ModelInput` / `ModelOutput` for the ONNX tensor `info` (shape as the model takes it)."""
    from tritonclient.grpc import model_config_pb2 as pb

    dims = _dims(info.shape, batched)
    return message(name=name, data_type=data_type(info.dtype), dims=dims or [1],
                   reshape=None if dims else pb.ModelTensorReshape(shape=[]))


def add_correlation_id_input(onnx_model: bytes, *, batched: bool) -> bytes:
    """The model with an extra uint64 input `CORRID` (`[batch, 1]`, or `[1]` unbatched) that
    no node reads: Triton feeds the sequence's correlation id there."""
    import onnx

    model = onnx.load_from_string(onnx_model)
    if any(i.name == CORRELATION_ID for i in model.graph.input):
        return onnx_model
    shape = ["batch", 1] if batched else [1]
    model.graph.input.append(onnx.helper.make_tensor_value_info(CORRELATION_ID, onnx.TensorProto.UINT64, shape))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def model_config(name: str, model, options: TritonOptions = TritonOptions()):
    """The `ModelConfig` message for a converted ONNX step model.

    Args:
        name: the model's name in the repository.
        model: a `exporter.convert.runtimes.OrtModel` of the step model: names, dtypes and
            shapes are taken from what ONNX Runtime reports for it.
        options: see `TritonOptions`.
    """
    from tritonclient.grpc import model_config_pb2 as pb  # optional dependency

    batched = options.max_batch_size > 0
    config = pb.ModelConfig(name=name, platform=PLATFORM, max_batch_size=options.max_batch_size)
    states = model.state_names
    for key in ("x",):
        info = model.inputs[key]
        config.input.append(pb.ModelInput(name=key, data_type=data_type(info.dtype), dims=_dims(info.shape, batched)))
    for key in model.output_names:  # `y`, or every output of an export with several, by name
        info = model.outputs[key]
        config.output.append(pb.ModelOutput(name=key, data_type=data_type(info.dtype), dims=_dims(info.shape, batched)))
    batching = _sequence_batching(config, options)
    if options.correlation_id:
        control = batching.control_input.add(name=CORRELATION_ID)
        control.control.add(kind=pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID, data_type="TYPE_UINT64")
    for state in states:
        info = model.inputs[state]
        dims = _dims(info.shape, batched)
        entry = batching.state.add(
            input_name=state, output_name=state_output_name(state), data_type=data_type(info.dtype), dims=dims
        )
        entry.initial_state.add(data_type=data_type(info.dtype), dims=dims, zero_data=True, name=f"{state}_zero")
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=1)
    return config


def write_config(config, path: Path) -> None:
    path.write_text(text_format.MessageToString(config))


def read_config(path: Path):
    """Parses a `config.pbtxt` back into a `ModelConfig` (raises on any unknown field)."""
    from tritonclient.grpc import model_config_pb2 as pb

    return text_format.Parse(Path(path).read_text(), pb.ModelConfig())


def version_of(export_dir: Path) -> int:
    """The export's version number (its folder name), or 1 for a folder not named by a number."""
    name = Path(export_dir).resolve().name
    return int(name) if name.isdigit() else 1


def write_repository(
    repo: Path, *, name: str, version: int, onnx_model: bytes, options: TritonOptions = TritonOptions()
) -> tuple[Path, Path]:
    """Writes `repo/name/version/model.onnx` and `repo/name/config.pbtxt`; returns their paths.

    `onnx_model` is the converted step model (`onnx.convert_signature(..., "step")`).
    """
    if options.correlation_id:
        onnx_model = add_correlation_id_input(onnx_model, batched=options.max_batch_size > 0)
    model_dir = Path(repo) / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    model_path = model_dir / str(version) / MODEL_FILE
    model_path.write_bytes(onnx_model)
    config_path = model_dir / CONFIG_FILE
    model = OrtModel(onnx_model)
    config = model_config(name, model, options)
    problems = check_config(config, model)
    if problems:  # a bug here, not a user error: the config is built from the model
        raise ConversionFailed(f"Triton config for {name!r} disagrees with its ONNX model: {'; '.join(problems)}")
    write_config(config, config_path)
    return model_path, config_path


def whole_sequence_config(name: str, model, options: TritonOptions = TritonOptions(), *,
                          batch_independent: bool | None = None):
    """The `ModelConfig` of a whole-sequence export's `serving_default` ONNX model (onnxruntime backend).

    No `sequence_batching` (nothing to keep between requests): every model input and output by
    name, `-1` for the batch (unless `options.max_batch_size` is 0) and time axes.

    Args:
        name: the model's name in the repository.
        model: an `OrtModel` of the converted `serving_default`.
        options: `max_batch_size` and `max_queue_delay_microseconds` apply; the sequence-batcher
            settings do not.
        batch_independent: `manifest.batch_independent`; only True declares `dynamic_batching`
            (batching rows whose independence was never proven could mix them).
    """
    from tritonclient.grpc import model_config_pb2 as pb  # optional dependency

    config = _whole_sequence_tensors(pb.ModelConfig(name=name, platform=PLATFORM,
                                                    max_batch_size=options.max_batch_size), model)
    if options.max_batch_size > 0 and batch_independent is True:
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_microseconds
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=1)
    return config


def _whole_sequence_tensors(config, model):
    """`config` with every input and output of the `serving_default` ONNX `model`, by name."""
    from tritonclient.grpc import model_config_pb2 as pb

    batched = config.max_batch_size > 0
    config.input.extend(_tensor(pb.ModelInput, key, info, batched) for key, info in model.inputs.items())
    config.output.extend(_tensor(pb.ModelOutput, key, model.outputs[key], batched) for key in model.output_names)
    return config


def _copy_model_code(path: Path) -> Path:
    """`triton_model.py` written to `path` (the Python backend's `model.py`)."""
    path.write_text((Path(__file__).parent / "triton_model.py").read_text())
    return path


def write_whole_sequence_repository(
    repo: Path, *, name: str, version: int, onnx_model: bytes, options: TritonOptions = TritonOptions(),
    batch_independent: bool | None = None, backend: Backend = Backend.ONNXRUNTIME,
) -> tuple[Path, ...]:
    """Writes a whole-sequence export's repository; returns the paths written, the ONNX model first.

    `onnx_model` is the converted `serving_default` (`onnx.convert_signature(..., "serving_default")`).
    onnxruntime: `repo/name/version/model.onnx` + `config.pbtxt` (`whole_sequence_config`); python:
    `repo/name/version/{serving_default.onnx,model.py}` + `config.pbtxt` (`python_whole_sequence_config`).
    """
    model_dir = Path(repo) / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    model = OrtModel(onnx_model)
    written = []
    if backend is Backend.PYTHON:
        model_path = model_dir / str(version) / PYTHON_WHOLE_FILE
        code_path = _copy_model_code(model_dir / str(version) / PYTHON_MODEL_FILE)
        config = python_whole_sequence_config(name, model, options)
        written.append(code_path)
    else:
        model_path = model_dir / str(version) / MODEL_FILE
        config = whole_sequence_config(name, model, options, batch_independent=batch_independent)
        problems = check_config(config, model)
        if problems:  # a bug here, not a user error: the config is built from the model
            raise ConversionFailed(f"Triton config for {name!r} disagrees with its ONNX model: {'; '.join(problems)}")
    model_path.write_bytes(onnx_model)
    config_path = model_dir / CONFIG_FILE
    write_config(config, config_path)
    return (model_path, *written, config_path)


def python_whole_sequence_config(name: str, model, options: TritonOptions = TritonOptions()):
    """The `ModelConfig` of the Python-backend model (`triton_model.py`, whole-sequence mode) for a
    whole-sequence export: the tensors of `whole_sequence_config`, `backend: "python"`, no batcher.

    `model.py` runs `serving_default.onnx` once per request, so requests are never batched together
    (no `dynamic_batching`); a request may hold up to `options.max_batch_size` sequences.
    """
    from tritonclient.grpc import model_config_pb2 as pb  # optional dependency

    config = _whole_sequence_tensors(pb.ModelConfig(name=name, backend=PYTHON_BACKEND,
                                                    max_batch_size=options.max_batch_size), model)
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=1)
    spec = {
        "whole_sequence_model": PYTHON_WHOLE_FILE,
        "inputs": list(model.inputs),
        # Each output: its name in the response and in the ONNX model (the same: `serving_default`'s keys).
        "outputs": list(model.output_names),
    }
    config.parameters[PYTHON_PARAMETER].string_value = json.dumps(spec, sort_keys=True)
    return config


def check_config(config, model) -> list[str]:
    """What in `config` disagrees with the ONNX model as ONNX Runtime reports it (empty: all agree).

    Checks every config input/output and state against the model's tensor names,
    dtypes and dims, and that every model input and output is accounted for (a
    config input, a state input, the config output, or a state output).
    """
    from tritonclient.grpc import model_config_pb2 as pb

    problems = []
    batched = config.max_batch_size > 0

    def expect(kind: str, name: str, infos: dict, dtype_value: int, dims) -> None:
        if name not in infos:
            problems.append(f"{kind} {name!r} is not a model {kind.split()[-1]}; the model has {sorted(infos)}")
            return
        info = infos[name]
        want_type, want_dims = data_type(info.dtype), _dims(info.shape, batched)
        if pb.DataType.Name(dtype_value) != want_type:
            problems.append(f"{kind} {name!r}: data_type {pb.DataType.Name(dtype_value)}, model has {want_type}")
        if list(dims) != want_dims:
            problems.append(f"{kind} {name!r}: dims {list(dims)}, model has {want_dims}")

    raw_inputs = dict(model.inputs)
    states = set(model.state_names)
    raw_outputs = {(k + STATE_OUTPUT_SUFFIX if k in states else k): v for k, v in model.outputs.items()}
    for tensor in config.input:
        expect("config input", tensor.name, raw_inputs, tensor.data_type, _model_dims(tensor))
    for tensor in config.output:
        expect("config output", tensor.name, raw_outputs, tensor.data_type, _model_dims(tensor))
    for state in config.sequence_batching.state:
        expect("state input", state.input_name, raw_inputs, state.data_type, state.dims)
        expect("state output", state.output_name, raw_outputs, state.data_type, state.dims)
        zero = [s for s in state.initial_state if s.zero_data]
        if len(zero) != 1 or list(zero[0].dims) != list(state.dims):
            problems.append(f"state {state.input_name!r} needs one zero initial_state with dims {list(state.dims)}")
    names = [c.name for c in config.sequence_batching.control_input]
    problems += [f"control input {n!r} is declared {names.count(n)} times (Triton refuses that at load)"
                 for n in sorted(set(names)) if names.count(n) > 1]
    for control in config.sequence_batching.control_input:
        for item in control.control:
            if item.kind == pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID and not item.data_type:
                problems.append(f"control input {control.name!r}: a CONTROL_SEQUENCE_CORRID control needs a "
                                "data_type (Triton refuses it at load)")
        if control.name not in raw_inputs:
            problems.append(f"control input {control.name!r} is not a model input; the model has {sorted(raw_inputs)}")
            continue
        for item in control.control:
            have = data_type(raw_inputs[control.name].dtype)
            if item.data_type and pb.DataType.Name(item.data_type) != have:
                problems.append(f"control input {control.name!r}: data_type {pb.DataType.Name(item.data_type)}, "
                                f"model has {have}")
    covered_in = ({t.name for t in config.input} | {s.input_name for s in config.sequence_batching.state}
                  | {c.name for c in config.sequence_batching.control_input})
    covered_out = {t.name for t in config.output} | {s.output_name for s in config.sequence_batching.state}
    problems += [f"model input {n!r} is neither a config input nor a state" for n in raw_inputs if n not in covered_in]
    problems += [f"model output {n!r} is neither a config output nor a state" for n in raw_outputs
                 if n not in covered_out]
    if config.HasField("sequence_batching") and not config.sequence_batching.WhichOneof("strategy_choice"):
        problems.append("sequence_batching has no strategy (direct or oldest)")
    if not config.HasField("sequence_batching") and states:
        problems.append(f"the model has states {sorted(states)} but the config no sequence_batching to keep them")
    return problems


def python_model_config(name: str, model, options: TritonOptions = TritonOptions(), initial=None, *,
                        generate=None, feedback_output: str = CHUNK_OUTPUT):
    """The `ModelConfig` of the Python-backend model (`triton_model.py`) for an ONNX step model.

    Args:
        name: the model's name in the repository.
        model: a `exporter.convert.runtimes.OrtModel` of the step model (as written, `CORRID` input or not).
        options: see `TritonOptions`; `correlation_id` is ignored (always declared).
        initial: an `OrtModel` of the export's `initial_state` signature (`PYTHON_INITIAL_FILE`):
            needed when the step model takes static inputs (each is then an input of every request,
            and a sequence's state starts from `initial_state` of the START request's values).
        generate: the export's `GenerateSpec` (`manifest.generate`), or None: declares the optional input
            `max_new_tokens` (`[1, 1]` int32) and the output `tokens` (`[1, N]`; `predictions`, `[1, N, ...]`,
            for features): a request carrying N > 0 runs its chunk (the prompt), then N more steps, each
            fed the argmax of the last step's `feedback_output` (or those features), as `generate` does.
        feedback_output: the output fed back (by its name in the response: the export's first output).

    Raises:
        BadInput: the step model takes static inputs and `initial` is None.
    """
    from tritonclient.grpc import model_config_pb2 as pb  # optional dependency

    statics = list(model.static_names)
    if statics and initial is None:
        raise BadInput(f"The step model takes the static input(s) {statics}: the Triton Python-backend model needs "
                       "the export's `initial_state` model too, to start each sequence from them.")

    batched = options.max_batch_size > 0
    control = pb.ModelSequenceBatching.Control
    config = pb.ModelConfig(name=name, backend=PYTHON_BACKEND, max_batch_size=options.max_batch_size)
    x = model.inputs["x"]
    one = None if batched else 1  # unbatched, the dims hold the batch dimension: one sequence per request
    config.input.append(pb.ModelInput(name=CHUNK_INPUT, data_type=data_type(x.dtype),
                                      dims=_dims((one, None, *x.shape[1:]), batched)))
    for static in statics:  # no time axis: `[1, *shape]`, in every request of a sequence
        info = model.inputs[static]
        config.input.append(pb.ModelInput(name=static, data_type=data_type(info.dtype),
                                          dims=_dims((one, *info.shape[1:]), batched)))
    contexts = _context_inputs(initial, statics)
    for context in contexts:  # an encoder's input, with a time axis of its own: in the START request only
        info = initial.inputs[context]
        config.input.append(pb.ModelInput(name=context, data_type=data_type(info.dtype),
                                          dims=_dims((one, None, *info.shape[2:]), batched), optional=True))
    states = sorted(model.state_names)
    outputs = chunk_outputs(model)
    for served, step_key in outputs:
        info = model.outputs[step_key]
        config.output.append(pb.ModelOutput(name=served, data_type=data_type(info.dtype),
                                            dims=_dims((one, None, *info.shape[1:]), batched)))
    for state in states:
        info = model.inputs[state]
        dims = _dims((one, *info.shape[1:]), batched)
        config.output.append(pb.ModelOutput(name=state, data_type=data_type(info.dtype), dims=dims or [1],
                                            # one number per sequence (a position): Triton needs dims, the
                                            # model gives [B]
                                            reshape=None if dims else pb.ModelTensorReshape(shape=[])))
    if generate is not None:
        taken = sorted({t.name for t in (*config.input, *config.output)} & {GENERATE_INPUT})
        if taken:
            raise BadInput(f"The Triton Python-backend model cannot name a tensor {taken[0]!r}: its `generate` "
                           "requests carry their number of new steps under that name. Rename that Keras "
                           "input or output and export again.")
        config.input.append(pb.ModelInput(name=GENERATE_INPUT, data_type="TYPE_INT32", dims=_dims((one, 1), batched),
                                          optional=True))
        config.output.append(_generated_output(generate, model, outputs, feedback_output, one, batched))
    batching = _sequence_batching(config, options)
    for input_name, kind in ((START, control.CONTROL_SEQUENCE_START), (END, control.CONTROL_SEQUENCE_END),
                             (READY, control.CONTROL_SEQUENCE_READY)):
        batching.control_input.add(name=input_name).control.add(kind=kind, int32_false_true=[0, 1])
    batching.control_input.add(name=CORRELATION_ID).control.add(kind=control.CONTROL_SEQUENCE_CORRID,
                                                                data_type="TYPE_UINT64")
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=1)
    spec = {
        "step_model": PYTHON_STEP_FILE,
        "input": "x",
        # Each output: its tensor name in the response, in the ONNX step model, and its per-step dtype/shape.
        "outputs": [{"name": served, "step_output": step_key, "dtype": np.dtype(model.outputs[step_key].dtype).name,
                     "shape": [int(d) for d in model.outputs[step_key].shape[1:]]} for served, step_key in outputs],
        "states": [{"name": s, "shape": [int(d) for d in model.inputs[s].shape[1:]],
                    "dtype": np.dtype(model.inputs[s].dtype).name} for s in states],
        "state_output_suffix": STATE_OUTPUT_SUFFIX,
        "statics": statics,
        "contexts": contexts,
        "initial_model": None if initial is None else PYTHON_INITIAL_FILE,
        # the `initial_state` model's scalar batch input and its outputs, `[onnx name, state name]` each
        "initial_batch_input": None if initial is None else _initial_batch_input(initial, statics),
        "initial_outputs": None if initial is None else [
            [o.name, OrtModel._signature_key(o.name)] for o in initial.session.get_outputs()],
        "correlation_id_input": CORRELATION_ID,
        "idle_seconds": options.max_sequence_idle_microseconds / 1e6,
        "max_sequences": options.max_sequences,
        "controls": {"start": START, "end": END, "ready": READY, "corrid": CORRELATION_ID},
        "generate": None if generate is None else {
            "input": GENERATE_INPUT, "output": generate.output_key, "feedback": generate.feedback.value,
            "from_output": feedback_output, "max_new_tokens": generate.max_new_tokens},
    }
    config.parameters[PYTHON_PARAMETER].string_value = json.dumps(spec, sort_keys=True)
    return config


def _generated_output(generate, model, outputs, feedback_output: str, one, batched: bool):
    """The config output of what a `generate` request returns: ids `[1, N]` of the input's dtype, or the fed-back
    output's features `[1, N, ...]`."""
    from tritonclient.grpc import model_config_pb2 as pb

    served = dict(outputs)
    if feedback_output not in served:
        raise ConversionFailed(f"generate feeds back output {feedback_output!r}; the model has {sorted(served)}")
    if generate.output_key in served:
        raise BadInput(f"The Triton Python-backend model cannot name an output {generate.output_key!r}: its "
                       "`generate` requests return their new steps under that name. Rename that Keras output.")
    if generate.feedback.value == "ids":
        dtype, shape = model.inputs["x"].dtype, ()
    else:
        info = model.outputs[served[feedback_output]]
        dtype, shape = info.dtype, info.shape[1:]
    return pb.ModelOutput(name=generate.output_key, data_type=data_type(dtype), dims=_dims((one, None, *shape), batched))


def chunk_outputs(model) -> list[tuple[str, str]]:
    """`(name in the response, name in the ONNX step model)` of each output of the Python-backend model.

    One output: `("outputs", "y")`, as `stream` names it. Several: each by its own name in both (the
    export's `serving_default` / `stream` / `step` key), sorted by name.

    Raises:
        BadInput: an output name that is also a state or a control/input name of the config
            (Triton needs every tensor name once).
    """
    states = set(model.state_names)
    names = model.output_names
    if list(names) == ["y"]:
        return [(CHUNK_OUTPUT, "y")]
    taken = states | set(model.static_names) | {CHUNK_INPUT, START, END, READY, CORRELATION_ID}
    clashes = sorted(set(names) & taken)
    if clashes:
        raise BadInput(f"The Triton Python-backend model cannot name an output {', '.join(map(repr, clashes))}: "
                       f"the config already uses {sorted(taken)} for its input, controls and states. "
                       "Rename that Keras output and export again.")
    return [(n, n) for n in names]


def _context_inputs(initial, statics) -> list[str]:
    """The `initial_state` model's inputs with a time axis (an encoder's context inputs), by name."""
    if initial is None:
        return []
    return sorted(n for n in initial.inputs if n not in statics and len(initial.inputs[n].shape) >= 2)


def _initial_batch_input(initial, statics) -> dict:
    others = [n for n in initial.inputs if n not in statics and n not in _context_inputs(initial, statics)]
    if len(others) != 1 or initial.inputs[others[0]].shape != ():
        raise ConversionFailed(f"the initial_state model takes {list(initial.inputs)}; expected one scalar batch "
                               f"size beside the static inputs {statics} and the context inputs")
    return {"name": others[0], "dtype": np.dtype(initial.inputs[others[0]].dtype).name}


def python_spec(config) -> dict:
    """The `model.py` settings a Python-backend config carries (its `seqexport` parameter)."""
    return json.loads(config.parameters[PYTHON_PARAMETER].string_value)


def write_python_repository(
    repo: Path, *, name: str, version: int, onnx_model: bytes, options: TritonOptions = TritonOptions(),
    initial_model: bytes | None = None, generate=None, feedback_output: str = CHUNK_OUTPUT,
) -> tuple[Path, Path, Path]:
    """Writes `repo/name/version/{model.py,step.onnx}` and `repo/name/config.pbtxt`; returns their paths.

    `onnx_model` is the converted step model (`onnx.convert_signature(..., "step")`); `initial_model`,
    for an export with static inputs, its converted `initial_state` (written as `PYTHON_INITIAL_FILE`);
    `generate`, `feedback_output`: see `python_model_config`.
    """
    model_dir = Path(repo) / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    step_path = model_dir / str(version) / PYTHON_STEP_FILE
    step_path.write_bytes(onnx_model)
    initial = None
    if initial_model is not None:
        (model_dir / str(version) / PYTHON_INITIAL_FILE).write_bytes(initial_model)
        initial = OrtModel(initial_model)
    code_path = _copy_model_code(model_dir / str(version) / PYTHON_MODEL_FILE)
    config = python_model_config(name, OrtModel(onnx_model), options, initial, generate=generate,
                                 feedback_output=feedback_output)
    config_path = model_dir / CONFIG_FILE
    write_config(config, config_path)
    return step_path, code_path, config_path
