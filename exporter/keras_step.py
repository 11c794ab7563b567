"""Rebuild a Keras sequence model as a `StepModel` around its RNN *cells*.

Why cells: a stateful RNN *layer* keeps its state in variables and runs its own
inner loop per call, which cuts the gradient path between chunks (the seed's
"case 1" and "case 2"). A cell is one step with explicit state ("case 3").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import tensorflow as tf
from keras.src.models.functional import Functional

from exporter.artifact.errors import CannotStream, SeqExportError, UnsupportedModel
from exporter.artifact.specs import StateSpec
from exporter.causal import Clock, attention_layers, cached_attention, clocked, positional
from exporter.fused import fused_lstm, is_fusable_lstm
from exporter.recurrence import (hoisted_cell, in_halves, is_hoistable_gru, is_hoistable_simple_rnn,
                                 simple_rnn_stack, swap_batch_and_time_bits, wants_halves)
from exporter.step_model import StepModel
from exporter.time_probe import PROBE_STEPS, probe_input, whole_call_traces, why_not_per_step

STATE_NAMES = {"LSTMCell": ("h", "c"), "GRUCell": ("h",), "SimpleRNNCell": ("h",)}
_BUILTIN_CELLS = tuple(STATE_NAMES)

# Layers known to act on each timestep alone, so `layer(x_t)` equals `layer(x)[:, t]`: no
# probe needed. Any other layer runs per step when exporter/time_probe.py proves it may.
_PER_STEP = (
    keras.layers.Dense,
    keras.layers.Dropout,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.LayerNormalization,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Embedding,
)

# Known to need the whole sequence, and not callable on one probe tensor: refused by name.
_WHOLE_SEQUENCE = {
    "Bidirectional": "it reads the sequence backwards as well as forwards",
    "MultiHeadAttention": "it attends over the whole sequence",
    "Attention": "it attends over the whole sequence",
    "AdditiveAttention": "it attends over the whole sequence",
}

_FIX = (
    "seqexport exports models that run one step at a time (RNN cells and per-step layers). "
    "Remove or replace this layer, or write a step-model factory "
    "(`seqexport export package.module:factory`, see the README)."
)


@dataclasses.dataclass(frozen=True)
class _Stage:
    """One layer of the step model: `(x_t, states, mask_t) -> (y_t, new_states)`."""

    name: str
    states: tuple[StateSpec, ...]
    call: Callable
    ends_sequence: bool = False  # an RNN without return_sequences
    # `(x [B, T, ...], states) -> (y [B, T, ...], new_states)` over a whole sequence at once
    # (a stateless stage: its own call on [B, T, ...]).
    sequence_call: Callable | None = None
    # `bind() -> (x [T, B, ...], states) -> (y [T, B, ...], new_states)`: an RNN's whole-sequence
    # kernel, time-major (a fused LSTM, a hoisted GRU or SimpleRNN loop), its weights read by
    # `bind` once per call; `split`: it runs faster in two batch halves (`recurrence.in_halves`).
    kernel: Callable | None = None
    split: bool = False
    # `x_t -> mask_t [B] bool` for a layer that computes the Keras mask from its input
    # (`Masking`, `Embedding(mask_zero=True)`): that mask reaches every later stage.
    mask_fn: Callable | None = None
    # `call` works on `[B, T, ...]` as well as on `[B, ...]` (Dense, activations, ...): such
    # stages after the last stateful one run once on the whole sequence, after the loop.
    rank_agnostic: bool = False
    # A SimpleRNN layer's cell when whole-sequence runs may run it in one loop with the SimpleRNN
    # layers next to it (`recurrence.simple_rnn_stack`).
    simple_rnn_cell: object | None = None

    def __post_init__(self):
        if self.sequence_call is None and not self.states and self.rank_agnostic:
            object.__setattr__(self, "sequence_call", lambda x, s: (self.call(x, (), None)[0], ()))

    @property
    def fusable(self) -> bool:
        """It can run over a whole sequence at once (`_run_whole_sequence`)."""
        return self.kernel is not None or self.sequence_call is not None

    @property
    def row_wise(self) -> bool:
        """Known to compute each batch row alone, on any leading axes: an RNN kernel, or a stateless
        stage that acts on the last axis (Dense, activations, normalisations, ...). Such stages run
        time-major as they are, and in batch halves."""
        return self.kernel is not None or (self.rank_agnostic and not self.states)


def layer_refusal(index: int, layer, why: str) -> CannotStream:
    where = f"layer {index} {layer.name!r} ({type(layer).__name__})"
    return CannotStream(f"L{where[1:]} cannot run step by step: {why}. {_FIX}", why=f"{where}: {why}")


def cannot_stream(model: keras.Model, why: str) -> CannotStream:
    """A refusal of the whole model (no state to carry, a subclassed `call`, ...), not of one layer."""
    return CannotStream(f"Model {model.name!r} {why}", why=f"model {model.name!r} {why.split('; ')[0]}")


def _cell_states(layer: keras.layers.RNN) -> tuple[list, object]:
    """(flat zero states [1, ...] from the cell's own `get_initial_state`, their nesting)."""
    cell = layer.cell
    if hasattr(cell, "get_initial_state"):
        nested = cell.get_initial_state(batch_size=1)
    else:
        sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
        nested = [tf.zeros((1, *(s if isinstance(s, (list, tuple)) else (s,))), layer.compute_dtype)
                  for s in tf.nest.flatten(sizes)]
    if not isinstance(nested, (list, tuple)):
        nested = [nested]
    return tf.nest.flatten(nested), nested


def rnn_stage(index: int, layer: keras.layers.RNN, masked: bool, emit: int = 0) -> _Stage:
    """A recurrent layer as its cell. `emit`: which of the layer's outputs flows on (0: its
    output; i >= 1: its (i-1)-th final state, `return_state=True`)."""
    if layer.go_backwards:
        raise layer_refusal(index, layer, "it has go_backwards=True, so step t needs the steps after it")
    cell = layer.cell
    cell_type = type(cell).__name__
    if masked:
        refusal = masked_rnn_refusal(index, layer)
        if refusal is not None:
            raise refusal
    flat, nesting = _cell_states(layer)
    labels = STATE_NAMES.get(cell_type, tuple(f"state{i}" for i in range(len(flat))))
    states = tuple(
        StateSpec(name=f"{layer.name}_{label}", layer=layer.name, index=i,
                  shape=tuple(int(d) for d in zero.shape[1:]), dtype=zero.dtype.name)
        for i, (label, zero) in enumerate(zip(labels, flat))
    )
    zero_output_for_mask = layer.zero_output_for_mask

    def call(x, prev, mask):
        output, new = cell(x, tf.nest.pack_sequence_as(nesting, list(prev)), training=False)
        new = tuple(tf.nest.flatten(new))
        if mask is not None:
            keep = mask[:, None]
            # Keras repeats the previous output at a masked step; for these cells it is h.
            previous_output = tf.zeros_like(output) if zero_output_for_mask else prev[0]
            output = tf.where(keep, output, previous_output)
            new = tuple(tf.where(keep, n, p) for n, p in zip(new, prev))
        return (output if emit == 0 else new[emit - 1]), new

    kernel, split = _sequence_kernel(cell) if emit == 0 else (None, False)
    return _Stage(layer.name, states, call, ends_sequence=emit > 0 or not layer.return_sequences,
                  kernel=kernel, split=split,
                  simple_rnn_cell=cell if emit == 0 and is_hoistable_simple_rnn(cell) else None)


def masked_rnn_refusal(index: int, layer: keras.layers.RNN) -> UnsupportedModel | None:
    """Why a Keras mask cannot reach this RNN (a masked step repeats the output, which is `h` for
    the built-in cells only), or None."""
    if type(layer.cell).__name__ in _BUILTIN_CELLS:
        return None
    return layer_refusal(index, layer, "masking is supported for SimpleRNN, GRU and LSTM cells only")


def _sequence_kernel(cell) -> tuple[Callable | None, bool]:
    """(the cell over a whole time-major sequence in one kernel (LSTM) or one hoisted loop (GRU,
    SimpleRNN), or None; whether it runs in two batch halves: an LSTM always, a loop when its
    step product is wide).

    These bypass the cell's `__call__`, so the input is cast here as Keras casts it there
    (a float64 input into a float32 cell).
    """
    if is_fusable_lstm(cell):
        return _casting(fused_lstm(cell), cell.compute_dtype), True
    if is_hoistable_gru(cell) or is_hoistable_simple_rnn(cell):
        return _casting(hoisted_cell(cell), cell.compute_dtype), wants_halves(cell)
    return None, False


def _casting(kernel: Callable, dtype) -> Callable:
    """A kernel's `bind` whose runs cast their input to the cell's dtype first."""

    def bind():
        run = kernel()
        return lambda x, states: run(tf.cast(x, dtype), states)

    return bind


def _causal_conv_stage(index: int, layer) -> _Stage:
    """`Conv1D(padding='causal')` as a ring buffer: the last (kernel_size - 1) * dilation inputs
    are its state (zeros at first, as causal padding is), so each step is exact.

    Step t runs the layer itself on `[window, x_t]`: causal padding then adds nothing the
    last output reads, so that output is `y_t` of the whole-sequence call.
    """
    if layer.strides[0] != 1:
        raise layer_refusal(index, layer, f"it has strides={layer.strides[0]}, so it emits fewer steps than it reads")
    if layer.data_format != "channels_last":
        raise layer_refusal(index, layer, "it is channels_first; the step model needs [batch, time, channels]")
    width = (layer.kernel_size[0] - 1) * layer.dilation_rate[0]
    channels = int(layer.input.shape[-1])
    if width == 0:
        return _Stage(layer.name, (), lambda x, s, m: (layer(x[:, None], training=False)[:, 0], ()))
    state = StateSpec(name=f"{layer.name}_window", layer=layer.name, index=0, shape=(width, channels),
                      dtype=layer.compute_dtype)

    def call(x, prev, mask):
        window = tf.concat([prev[0], tf.cast(x, prev[0].dtype)[:, None]], axis=1)
        return layer(window, training=False)[:, -1], (window[:, 1:],)

    def sequence_call(x, prev):
        padded = tf.concat([prev[0], tf.cast(x, prev[0].dtype)], axis=1)
        return layer(padded, training=False)[:, width:], (padded[:, -width:],)

    return _Stage(layer.name, (state,), call, sequence_call=sequence_call)


def _mask_from_inputs(layer) -> Callable | None:
    """Keras's own mask rule for a layer that starts one, on one step's input."""
    if isinstance(layer, keras.layers.Masking):
        value = layer.mask_value
        return lambda x: tf.reduce_any(tf.not_equal(x, tf.cast(value, x.dtype)), axis=-1)
    if isinstance(layer, keras.layers.Embedding) and layer.mask_zero:
        return lambda ids: tf.reshape(tf.reduce_any(tf.reshape(tf.not_equal(ids, 0), [tf.shape(ids)[0], -1]),
                                                    axis=-1), [-1])
    return None


def _one_step(layer):
    """Runs a sequence layer on one step: `layer(x_t[:, None])[:, 0]`."""
    return lambda x, s, m: (layer(x[:, None], training=False)[:, 0], ())


def per_step_stage(index: int, layer, *, after_sequence: bool = False, clock: Clock | None = None) -> _Stage:
    """A layer without state. `after_sequence`: it follows an RNN that returns its last step only,
    so it sees `[B, ...]` without a time axis and runs as it is. `clock`: the export's position
    state, for causal attention on a key/value cache and layers that read the position
    (exporter/causal.py); None: refused."""
    known = isinstance(layer, _PER_STEP) or getattr(layer, "seqexport_per_step", False)
    whole = lambda x, s: (layer(x, training=False), ())  # noqa: E731  over [B, T, ...]
    if after_sequence:
        return _Stage(layer.name, (), lambda x, s, m: (layer(x, training=False), ()), rank_agnostic=known)
    if isinstance(layer, keras.layers.TimeDistributed):
        # Per step by construction: Keras folds time into the batch for the wrapped layer.
        inner = layer.layer
        return _Stage(layer.name, (), lambda x, s, m: (inner(x, training=False), ()),
                      sequence_call=_time_folded(inner), rank_agnostic=isinstance(inner, _PER_STEP))
    if isinstance(layer, keras.layers.Masking):
        def mask_values(x, s, mask):
            if mask is None:
                return x, ()
            return x * tf.cast(mask, x.dtype)[:, None], ()
        return _Stage(layer.name, (), mask_values, mask_fn=_mask_from_inputs(layer))
    if isinstance(layer, keras.layers.BatchNormalization):
        if layer.axis not in (-1, len(layer.input.shape) - 1):
            raise layer_refusal(index, layer, "it normalises over an axis other than the features")
        return _Stage(layer.name, (), lambda x, s, m: (_batch_norm_inference(layer, x), ()), rank_agnostic=True)
    if isinstance(layer, keras.layers.Embedding) and layer.mask_zero:
        # tf.identity drops the Keras mask the layer attaches: the stage's mask_fn carries it.
        return _Stage(layer.name, (), lambda x, s, m: (tf.identity(layer(x)), ()), mask_fn=_mask_from_inputs(layer))
    if known:
        return _Stage(layer.name, (), lambda x, s, m: (layer(x, training=False), ()), rank_agnostic=True)
    kind = type(layer).__name__
    if clock is not None and attention_layers(layer) and not after_sequence:
        return _cached_attention_stage(index, layer, clock)
    if kind in _WHOLE_SEQUENCE:
        raise layer_refusal(index, layer, _WHOLE_SEQUENCE[kind])
    if isinstance(layer, keras.layers.Conv1D) and layer.padding == "causal":
        return _causal_conv_stage(index, layer)
    shape = tuple(layer.input.shape)
    if len(shape) < 2 or any(d is None for d in shape[2:]):
        raise layer_refusal(index, layer, f"its input shape {shape} is not [batch, time, static features...]")
    dtype = tf.as_dtype(layer.input.dtype).name
    why = why_not_per_step(layer, shape[2:], dtype, steps=shape[1])
    if why is not None and clock is not None:
        where = f"layer {index} {layer.name!r} ({type(layer).__name__})"
        step = positional(layer, where, clock,
                          lambda seed: probe_input(shape[2:], dtype, shape[1] or PROBE_STEPS, _vocab(layer), seed))
        if callable(step):
            return _Stage(layer.name, (), lambda x, s, m: (step(x), ()))
    if why is not None:
        if not type(layer).__module__.startswith("keras."):
            why += " (a custom layer that is per-step after all can declare `seqexport_per_step = True`)"
        raise layer_refusal(index, layer, why)
    traces = whole_call_traces(layer, shape[2:], tf.as_dtype(layer.input.dtype).name, steps=shape[1])
    return _Stage(layer.name, (), _one_step(layer), sequence_call=whole if traces else _time_folded(layer, steps=1))


def _vocab(layer) -> int | None:
    """The ids a layer that reads token ids takes (its `Embedding`'s input_dim), for probes."""
    return next((int(l.input_dim) for l in layer._flatten_layers(include_self=True)
                 if isinstance(l, keras.layers.Embedding)), None)


def _cached_attention_stage(index: int, layer, clock: Clock) -> _Stage:
    """A layer that is or holds causal `MultiHeadAttention`: stepped on key/value caches (exporter/causal.py)."""
    shape = tuple(layer.input.shape)
    if len(shape) < 3 or any(d is None for d in shape[2:]):
        raise layer_refusal(index, layer, f"its input shape {shape} is not [batch, time, static features...]")
    dtype = tf.as_dtype(layer.input.dtype).name
    where = f"layer {index} {layer.name!r} ({type(layer).__name__})"
    found = cached_attention(layer, where, clock, lambda l, inputs: l(inputs[0], training=False),
                             lambda seed: [probe_input(shape[2:], dtype, shape[1] or PROBE_STEPS, None, seed)])
    if isinstance(found, str):
        raise layer_refusal(index, layer, found)
    specs, step = found
    return _Stage(layer.name, specs, lambda x, s, m: step([x], s))


def _time_folded(layer, *, steps: int | None = None) -> Callable:
    """`layer` over `[B, T, ...]` with time folded into the batch: `[B*T, ...]` (or `[B*T, 1, ...]`
    for a layer that needs a time axis, `steps=1`), as `TimeDistributed` means it, for any T."""

    def call(x, s):
        shape = tf.shape(x)
        folded = tf.reshape(x, tf.concat([[shape[0] * shape[1]], [1] if steps else [], shape[2:]], 0))
        y = layer(folded, training=False)
        if steps:
            y = y[:, 0]
        out = tf.reshape(y, tf.concat([shape[:2], tf.shape(y)[1:]], 0))
        out.set_shape([None, None, *y.shape[1:]])
        return out, ()

    return call


def _batch_norm_inference(layer, x):
    """BatchNormalization with its moving statistics (its input_spec wants [B, T, F])."""
    scale = tf.math.rsqrt(layer.moving_variance.value + layer.epsilon)
    if layer.scale:
        scale = scale * layer.gamma.value
    offset = -layer.moving_mean.value * scale
    if layer.center:
        offset = offset + layer.beta.value
    return x * tf.cast(scale, x.dtype) + tf.cast(offset, x.dtype)


def _run_stages(stages, x, prev_states, mask):
    """The stages one after the other, each taking its slice of the states."""
    new_states, offset = [], 0
    for stage in stages:
        count = len(stage.states)
        states = tuple(prev_states[offset : offset + count])
        if stage.mask_fn is not None:
            computed = stage.mask_fn(x)
            mask = computed if mask is None else tf.logical_and(mask, computed)
        x, new = stage.call(x, states, mask)
        new_states.extend(new)
        offset += count
    return x, tuple(new_states)


def _whole_sequence_groups(stages) -> list[list[_Stage]]:
    """The stages in call order, consecutive SimpleRNN layers (each but the last returning its
    sequence) grouped: each group runs as one loop; every other stage is a group of its own."""
    groups: list[list[_Stage]] = []
    for stage in stages:
        previous = groups[-1][-1] if groups else None
        if (stage.simple_rnn_cell is not None and previous is not None and previous.simple_rnn_cell is not None
                and not previous.ends_sequence):
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def _segments(groups: list[list[_Stage]]) -> list[tuple[bool, list[list[_Stage]]]]:
    """The groups cut into runs that go together: (split, groups). Consecutive row-wise groups
    (`_Stage.row_wise`) are one run, split into two batch halves from its first group to its
    last when one of its kernels gains from halves: the halves are split and joined once, not
    around every kernel. Any other group is a run of its own, on the whole batch."""
    runs: list[tuple[bool, list[list[_Stage]]]] = []
    for group in groups:
        row_wise = all(stage.row_wise for stage in group)
        if row_wise and runs and runs[-1][0]:
            runs[-1][1].append(group)
        else:
            runs.append((row_wise, [group]))
    return [(row_wise and any(stage.split for group in run for stage in group), run) for row_wise, run in runs]


def _bind_group(group: list[_Stage]) -> Callable | None:
    """The run of a group's kernel, its weights read now (once for both batch halves), or None."""
    if len(group) > 1:
        cells = [stage.simple_rnn_cell for stage in group]
        # Cast as `_sequence_kernel` does (Keras casts in the cell's `__call__`).
        return _casting(simple_rnn_stack(cells), cells[0].compute_dtype)()
    return group[0].kernel() if group[0].kernel is not None else None


def _run_group_time_major(group: list[_Stage], run: Callable | None, x, states):
    """One group over `x [T, B, ...]`; `run`: its bound kernel."""
    if run is not None:
        return run(x, states)
    stage = group[0]
    if stage.row_wise:
        return stage.call(x, (), None)
    y, new = stage.sequence_call(swap_batch_and_time_bits(x), states)
    return swap_batch_and_time_bits(y), new


def _run_whole_sequence(stages, x, prev_states):
    """The stages over `x [B, T, ...]` at once, layer by layer as Keras runs them, except that a
    group of consecutive SimpleRNN layers runs as one loop (`recurrence.simple_rnn_stack`).

    Time-major inside: the input is transposed once, every RNN kernel reads and writes
    `[T, B, ...]` and so do the row-wise stages between them and after them (a Dense head),
    and only the last output is transposed back. A run of row-wise stages whose kernels gain
    from batch halves runs in halves from end to end (`_segments`): a GRU(128) and its Dense(8)
    head join two `[T, B/2, 8]` halves, not two `[T, B/2, 128]` ones, and transpose `[T, B, 8]`.
    """
    x = swap_batch_and_time_bits(x)
    states = tuple(prev_states)
    new_states = []
    for split, groups in _segments(_whole_sequence_groups(stages)):
        count = sum(len(stage.states) for group in groups for stage in group)
        segment_states, states = states[:count], states[count:]

        bound = [_bind_group(group) for group in groups]

        def run(x, segment_states, groups=groups, bound=bound):
            new = []
            for group, kernel in zip(groups, bound):
                taken = sum(len(stage.states) for stage in group)
                x, group_new = _run_group_time_major(group, kernel, x, segment_states[:taken])
                segment_states = segment_states[taken:]
                new.extend(group_new)
            return x, tuple(new)

        x, new = in_halves(run, x, segment_states) if split else run(x, segment_states)
        new_states.extend(new)
    return swap_batch_and_time_bits(x), tuple(new_states)


class NotAChain(UnsupportedModel):
    """A functional model with branches, merges or shared layers: exporter/keras_graph.py takes it."""


def _sequence_layers(model: keras.Model) -> list[tuple[object, int]]:
    """The model's layers in call order, if they form one chain from one input, each with the
    index of its outputs that the next layer (or the model's output) reads (`return_state`).

    Nested Sequential and functional chains are flattened into the chain.
    """
    if len(model.inputs) != 1:
        # One sequence input plus static inputs: exporter/keras_graph.py takes it, or says why not.
        raise NotAChain(f"Model {model.name!r} has {len(model.inputs)} inputs: a graph, not a chain.")
    if len(model.outputs) != 1:
        raise NotAChain(f"Model {model.name!r} has {len(model.outputs)} outputs: a graph, not a chain.")
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    if isinstance(model, keras.Sequential):
        chain = [(layer, 0) for layer in layers]
    else:
        chain, previous = [], None
        for index, layer in enumerate(layers):
            nodes = [n for n in layer._inbound_nodes if n.operation is layer]
            parents = [p.operation for n in nodes for p in n.parent_nodes]
            parents = [p for p in parents if not isinstance(p, keras.layers.InputLayer)]
            if len(nodes) != 1 or parents != ([previous] if previous is not None else []):
                raise NotAChain(
                    f"Layer {index} {layer.name!r} ({type(layer).__name__}) is not fed by the layer "
                    "before it alone: seqexport exports a chain of layers (Sequential, or a "
                    "functional model without branches or shared layers; branches and merges are "
                    "not supported yet: a step-model factory can express them, see the README)."
                )
            if chain:
                chain[-1] = (previous, _output_index(nodes[0].arguments.keras_tensors[0]))
            chain.append((layer, 0))
            previous = layer
        if chain:
            chain[-1] = (previous, _output_index(model.outputs[0]))
    flat = []
    for layer, emit in chain:
        if isinstance(layer, keras.Model) and not is_step_model(layer):
            flat.extend(_sequence_layers(layer))  # a nested encoder: its own chain, inline
        else:
            flat.append((layer, emit))
    return flat


def _output_index(tensor) -> int:
    history = getattr(tensor, "_keras_history", None)
    return int(history.tensor_index) if history is not None else 0


def mask_source(layers) -> tuple[bool, float]:
    """(whether a layer starts a Keras mask, the value it marks padding with)."""
    for layer in layers:
        if isinstance(layer, keras.layers.Masking):
            return True, float(layer.mask_value)
        if isinstance(layer, keras.layers.Embedding) and layer.mask_zero:
            return True, 0.0
    return False, 0.0


def stateful_batch(layers) -> int | None:
    """The batch size a `stateful=True` RNN among `layers` was built for (its states are that wide), or None."""
    for layer in layers:
        if isinstance(layer, keras.layers.RNN) and layer.stateful:
            return int(layer.states[0].shape[0]) if getattr(layer, "states", None) else None
    return None


def step_binder(model: keras.Model, masked_step: Callable) -> Callable:
    """`bind_step` for a Keras model: variables read once, outside the loop (StatelessScope)."""
    keras_variables = list(model.variables)

    def bind_step():
        mapping = [(v, v.value.read_value()) for v in keras_variables]

        def bound(x, prev_states, mask=None, *statics):  # `statics`: a model with static inputs
            with keras.StatelessScope(state_mapping=mapping):
                return masked_step(x, prev_states, mask, *statics)

        return bound

    return bind_step


def is_step_model(model: keras.Model) -> bool:
    """A functional step model: inputs [x_t, *states], outputs [y_t, *new_states] (the seed's case 3)."""
    if len(model.inputs) < 2 or len(model.inputs) != len(model.outputs):
        return False
    shapes_in = [tuple(t.shape[1:]) for t in model.inputs[1:]]
    shapes_out = [tuple(t.shape[1:]) for t in model.outputs[1:]]
    return shapes_in == shapes_out and all(len(t.shape) == 2 for t in model.inputs)


def from_step_model(model: keras.Model, description: str) -> StepModel:
    states = tuple(
        StateSpec(name=_key(t.name, f"state{i}"), layer=model.name, index=i, shape=tuple(int(d) for d in t.shape[1:]),
                  dtype=tf.as_dtype(t.dtype).name)
        for i, t in enumerate(model.inputs[1:])
    )

    def masked_step(x, prev_states, mask=None):
        if mask is not None:
            raise UnsupportedModel("A functional step model has no mask.")
        outputs = model([x, *prev_states], training=False)
        return outputs[0], tuple(outputs[1:])

    def step(x, prev_states):
        return masked_step(x, prev_states)

    def reference(inputs, lengths=None):
        # The Keras model itself, called step by step in Python: independent of the while_loop.
        batch = tf.shape(inputs)[0]
        prev = tuple(tf.zeros(tf.stack([batch, *s.shape]), dtype=s.dtype) for s in states)
        ys = []
        for t in range(inputs.shape[1]):
            y, prev = step(inputs[:, t], prev)
            ys.append(y)
        return tf.stack(ys, axis=1)

    x_spec, y_spec = model.inputs[0], model.outputs[0]
    return StepModel(
        step_fn=step,
        bind_step=step_binder(model, masked_step),
        input_shape=tuple(int(d) for d in x_spec.shape[1:]),
        input_dtype=tf.as_dtype(x_spec.dtype).name,
        output_shape=tuple(int(d) for d in y_spec.shape[1:]),
        output_dtype=tf.as_dtype(y_spec.dtype).name,
        states=states,
        variables=tuple(v.value for v in model.variables),
        trainable_variables=tuple(v.value for v in model.trainable_variables),
        trainable_names=tuple(v.path for v in model.trainable_variables),
        reference_fn=reference,
        description=description or f"Keras step model {model.name!r}",
    )


def _key(name: str, fallback: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name)
    return cleaned if cleaned[:1].isalpha() else fallback


def probe_step(model: keras.Model, step: Callable, x, states):
    """`step(x, states)` on one probe step; a failure is the model's, named, without a traceback."""
    try:
        return step(x, states)
    except SeqExportError:
        raise  # a refusal the step itself found (a mask reaching a custom cell, ...): already named
    except Exception as exc:  # noqa: BLE001
        raise cannot_stream(model, f"cannot run step by step: its rebuilt step failed on a probe step "
                            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}). "
                            f"{_FIX}") from None


def keras_reference(model: keras.Model, layers) -> Callable:
    """The ground truth: the Keras model's own call on the whole sequence (stateful layers reset).

    One output comes back as a tensor even where the model wraps it in a dict or list of one.
    """
    single = len(model.outputs) == 1

    def reference(inputs, lengths=None):
        for layer in layers:
            if isinstance(layer, keras.layers.RNN) and layer.stateful:
                layer.reset_states()
        result = model(inputs, training=False)
        if single and isinstance(result, (dict, list, tuple)):
            (result,) = result.values() if isinstance(result, dict) else result
        return result

    return reference


def _stage(index: int, layer, emit: int, masked: bool, ended_by: list, clock: Clock | None = None) -> _Stage:
    """`ended_by`: the RNN that returned its last step only, then the layers after it."""
    if emit and not isinstance(layer, keras.layers.RNN):
        raise layer_refusal(index, layer, f"its output {emit} is used, and only RNN layers have several outputs here")
    if isinstance(layer, keras.layers.RNN):
        if ended_by:
            between = "".join(f", then {l.name!r} ({type(l).__name__})" for l in ended_by[1:])
            raise layer_refusal(index, layer, f"it comes after {ended_by[0].name!r} ({type(ended_by[0]).__name__}), which "
                        f"returns its last step only (no return_sequences){between}: there is no sequence "
                        "left to step through")
        return rnn_stage(index, layer, masked, emit)
    return per_step_stage(index, layer, after_sequence=bool(ended_by), clock=clock)


def with_position(model: keras.Model, clock: Clock, states: tuple, masked: bool) -> tuple:
    """The states with the position last, where a layer reads it (exporter/causal.py)."""
    if not clock.used:
        return states
    if masked:
        raise cannot_stream(model, "has a Keras mask (padding) and a layer that reads the position or attends on a "
                            "key/value cache; the position of a padded step is not defined, so it does not stream")
    return (*states, Clock.spec())


def is_graph_model(model: keras.Model) -> bool:
    """A Sequential or functional model: a graph of layers to take apart (a subclassed one's `call` is code)."""
    return isinstance(model, (keras.Sequential, Functional))


def fixed_steps(model: keras.Model, tensor) -> int | None:
    """The time length a sequence Input fixes (`keras.Input((T, F))`, `pad_sequences(maxlen=T)` ids), or None.

    Raises:
        UnsupportedModel: it is one step (the verification streams the probe in two chunks).
    """
    steps = tensor.shape[1] if len(tensor.shape) >= 2 else None
    if steps is not None and steps < 2:
        raise cannot_stream(model, f"takes sequences of {steps} step only (input {tensor.name!r}); the verification "
                            "streams the golden probe in two chunks, so it needs at least 2 steps.")
    return None if steps is None else int(steps)


def chain_step_model(model: keras.Model, description: str = "", *, max_length: int | None = None) -> StepModel:
    """Builds the step model of a Keras model that is a chain of RNN and per-step layers.

    `exporter.keras_model.step_model_from_keras` is the entry point: it sends a step model,
    and a graph that is not a chain (`NotAChain`), elsewhere.

    Raises:
        NotAChain: the model has branches, merges or shared layers.
        UnsupportedModel: naming the first layer that cannot run step by step.
    """
    chain = _sequence_layers(model)
    layers = [layer for layer, _ in chain]
    masked, pad_value = mask_source(layers)
    clock = Clock(max_length or fixed_steps(model, model.inputs[0]))
    stages: list[_Stage] = []
    ended_by: list = []  # the RNN that returns its last step only, and the layers after it
    for index, (layer, emit) in enumerate(chain):
        try:
            stage = _stage(index, layer, emit, masked, ended_by, clock)
        except SeqExportError:
            raise
        except Exception as exc:  # noqa: BLE001  any layer can fail any way: name it, no traceback
            raise layer_refusal(index, layer, f"building its step raised {type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from None
        if stage.ends_sequence or ended_by:
            ended_by.append(layer)
        stages.append(stage)

    if not any(stage.states for stage in stages):
        raise cannot_stream(model, "has no recurrent layer (SimpleRNN, GRU, LSTM, keras.layers.RNN) and no causal "
                            "convolution; seqexport streams models that carry a state from step to step (a custom "
                            "recurrence can be written as a step-model factory, see the README).")
    states = with_position(model, clock, tuple(spec for stage in stages for spec in stage.states), masked)
    # Stateless per-step layers after the last RNN (a Dense head, say) run once on the whole
    # sequence after the loop instead of once per step: fewer ops per iteration.
    last_core = max(i for i, stage in enumerate(stages) if stage.states or not stage.rank_agnostic)
    core_stages, head_stages = stages[: last_core + 1], stages[last_core + 1 :]

    def masked_step(x, prev_states, mask):
        return _run_stages(stages, x, prev_states, mask)

    def core_step(x, prev_states, mask=None):
        return _run_stages(core_stages, x, prev_states, mask)

    if clock.used:
        masked_step, core_step = clocked(clock, masked_step), clocked(clock, core_step)

    def head(y):
        for stage in head_stages:
            y, _ = stage.call(y, (), None)
        return y

    def step(x, prev_states):
        return masked_step(x, prev_states, None)

    def fused(inputs, prev_states):
        return _run_whole_sequence(stages, inputs, prev_states)

    fusable = not masked and all(stage.fusable for stage in stages)

    input_spec = model.inputs[0]
    if len(input_spec.shape) < 2:
        raise UnsupportedModel(
            f"Model {model.name!r} input has shape {input_spec.shape}; expected [batch, time, ...]."
        )
    input_shape = tuple(input_spec.shape[2:])
    if any(d is None for d in input_shape):
        raise UnsupportedModel(
            f"Model {model.name!r} input has shape {input_spec.shape}: every dimension after "
            "[batch, time] must be static."
        )
    input_dtype = tf.as_dtype(input_spec.dtype).name
    probe = tf.zeros((1, *input_shape), dtype=input_dtype)
    zero_states = tuple(tf.zeros((1, *s.shape), dtype=s.dtype) for s in states)
    y, _ = probe_step(model, step, probe, zero_states)
    core_y, _ = probe_step(model, core_step, probe, zero_states)
    reference = keras_reference(model, layers)

    variables = tuple(v.value for v in model.variables)
    trainable = tuple(v.value for v in model.trainable_variables)
    return StepModel(
        step_fn=step,
        masked_step_fn=masked_step if masked else None,
        bind_step=step_binder(model, core_step if head_stages else masked_step),
        head=head if head_stages else None,
        fused_unroll=fused if fusable else None,
        core_output_shape=tuple(int(d) for d in core_y.shape[1:]) if head_stages else None,
        core_output_dtype=core_y.dtype.name if head_stages else None,
        input_shape=input_shape,
        input_dtype=input_dtype,
        output_shape=tuple(int(d) for d in y.shape[1:]),
        output_dtype=y.dtype.name,
        states=states,
        variables=variables,
        trainable_variables=trainable,
        trainable_names=tuple(v.path for v in model.trainable_variables),
        last_step_only=bool(ended_by),
        reference_fn=reference,
        mask_pad_value=pad_value,
        reference_batch=stateful_batch(layers),
        reference_steps=fixed_steps(model, input_spec),
        fixed_steps=fixed_steps(model, input_spec),
        input_vocab=next((l.input_dim for l in layers if isinstance(l, keras.layers.Embedding)), None),
        description=description or f"Keras model {model.name!r}",
        max_length=clock.cache_length,
        findings=tuple(clock.findings),
    )
