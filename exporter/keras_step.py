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

from exporter.errors import UnsupportedModel
from exporter.fused import fused_lstm, is_fusable_lstm
from exporter.recurrence import hoisted_cell, is_hoistable_gru, is_hoistable_simple_rnn
from exporter.specs import StateSpec
from exporter.step_model import StepModel

_STATE_NAMES = {"LSTMCell": ("h", "c"), "GRUCell": ("h",), "SimpleRNNCell": ("h",)}
_BUILTIN_CELLS = tuple(_STATE_NAMES)

# Layers that act on each timestep alone, so `layer(x_t)` equals `layer(x)[:, t]`.
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

_WHOLE_SEQUENCE = {
    "Bidirectional": "it reads the sequence backwards as well as forwards",
    "GlobalAveragePooling1D": "it pools over the whole time axis",
    "GlobalMaxPooling1D": "it pools over the whole time axis",
    "MultiHeadAttention": "it attends over the whole sequence",
    "Attention": "it attends over the whole sequence",
    "AdditiveAttention": "it attends over the whole sequence",
    "Flatten": "it mixes the time axis into the features",
    "RepeatVector": "it builds a new time axis",
    "Reshape": "it may mix the time axis into the features",
    "Lambda": "its code cannot be checked to act on each step alone",
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
    # `(x [B, T, ...], states) -> (y [B, T, ...], new_states)` over a whole sequence in one
    # kernel, for a stage that has one (a stateless stage: its own call on [B, T, ...]).
    sequence_call: Callable | None = None

    def __post_init__(self):
        if self.sequence_call is None and not self.states:
            object.__setattr__(self, "sequence_call", lambda x, s: (self.call(x, (), None)[0], ()))


def _fail(index: int, layer, why: str) -> UnsupportedModel:
    return UnsupportedModel(
        f"Layer {index} {layer.name!r} ({type(layer).__name__}) cannot run step by step: {why}. {_FIX}"
    )


def _rnn_stage(index: int, layer: keras.layers.RNN, masked: bool) -> _Stage:
    if layer.go_backwards:
        raise _fail(index, layer, "it has go_backwards=True, so step t needs the steps after it")
    cell = layer.cell
    cell_type = type(cell).__name__
    if isinstance(cell, keras.layers.StackedRNNCells):
        raise _fail(index, layer, "StackedRNNCells are not supported; stack RNN layers instead")
    if masked and cell_type not in _BUILTIN_CELLS:
        raise _fail(index, layer, "masking is supported for SimpleRNN, GRU and LSTM cells only")
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    labels = _STATE_NAMES.get(cell_type, tuple(f"state{i}" for i in range(len(sizes))))
    states = tuple(
        StateSpec(name=f"{layer.name}_{label}", layer=layer.name, index=i, shape=(int(size),))
        for i, (label, size) in enumerate(zip(labels, sizes))
    )
    zero_output_for_mask = layer.zero_output_for_mask

    def call(x, prev, mask):
        output, new = cell(x, list(prev), training=False)
        new = tuple(new) if isinstance(new, (list, tuple)) else (new,)
        if mask is not None:
            keep = mask[:, None]
            # Keras repeats the previous output at a masked step; for these cells it is h.
            previous_output = tf.zeros_like(output) if zero_output_for_mask else prev[0]
            output = tf.where(keep, output, previous_output)
            new = tuple(tf.where(keep, n, p) for n, p in zip(new, prev))
        return output, new

    return _Stage(layer.name, states, call, ends_sequence=not layer.return_sequences,
                  sequence_call=_sequence_call(cell))


def _sequence_call(cell) -> Callable | None:
    """The cell over a whole sequence in one kernel (LSTM) or one hoisted loop (GRU, SimpleRNN)."""
    if is_fusable_lstm(cell):
        return fused_lstm(cell)
    if is_hoistable_gru(cell) or is_hoistable_simple_rnn(cell):
        return hoisted_cell(cell)
    return None


def _per_step_stage(index: int, layer) -> _Stage:
    if isinstance(layer, keras.layers.TimeDistributed):
        _per_step_stage(index, layer.layer)  # the wrapped layer must be per-step too
        inner = layer.layer
        return _Stage(layer.name, (), lambda x, s, m: (inner(x, training=False), ()))
    if isinstance(layer, keras.layers.Masking):
        def mask_values(x, s, mask):
            if mask is None:
                return x, ()
            return x * tf.cast(mask, x.dtype)[:, None], ()
        return _Stage(layer.name, (), mask_values)
    if isinstance(layer, keras.layers.BatchNormalization):
        if layer.axis not in (-1, len(layer.input.shape) - 1):
            raise _fail(index, layer, "it normalises over an axis other than the features")
        return _Stage(layer.name, (), lambda x, s, m: (_batch_norm_inference(layer, x), ()))
    if isinstance(layer, keras.layers.Embedding) and layer.mask_zero:
        # tf.identity drops the Keras mask the layer attaches: the unroll masks by `lengths`.
        return _Stage(layer.name, (), lambda x, s, m: (tf.identity(layer(x)), ()))
    if isinstance(layer, _PER_STEP) or getattr(layer, "seqexport_per_step", False):
        return _Stage(layer.name, (), lambda x, s, m: (layer(x, training=False), ()))
    kind = type(layer).__name__
    if kind in _WHOLE_SEQUENCE:
        raise _fail(index, layer, _WHOLE_SEQUENCE[kind])
    if isinstance(layer, keras.layers.Conv1D):
        why = "it is a causal convolution, which needs a window of past steps as state (not supported yet)"
        if layer.padding != "causal":
            why = f"its padding is {layer.padding!r}, so step t reads steps after t"
        raise _fail(index, layer, why)
    raise _fail(
        index,
        layer,
        "it is not a layer seqexport knows to act on each timestep alone "
        "(a custom per-step layer can declare `seqexport_per_step = True`)",
    )


def _batch_norm_inference(layer, x):
    """BatchNormalization with its moving statistics (its input_spec wants [B, T, F])."""
    scale = tf.math.rsqrt(layer.moving_variance.value + layer.epsilon)
    if layer.scale:
        scale = scale * layer.gamma.value
    offset = -layer.moving_mean.value * scale
    if layer.center:
        offset = offset + layer.beta.value
    return x * tf.cast(scale, x.dtype) + tf.cast(offset, x.dtype)


def _run_stages(stages, x, prev_states, mask, *, whole_sequence: bool = False):
    """The stages one after the other, each taking its slice of the states. `whole_sequence`:
    each stage runs over `x [B, T, ...]` at once (layer by layer, as Keras runs them)."""
    new_states, offset = [], 0
    for stage in stages:
        count = len(stage.states)
        states = tuple(prev_states[offset : offset + count])
        x, new = stage.sequence_call(x, states) if whole_sequence else stage.call(x, states, mask)
        new_states.extend(new)
        offset += count
    return x, tuple(new_states)


def _sequence_layers(model: keras.Model) -> list:
    """The model's layers in call order, if they form one chain from one input."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedModel(
            f"Model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "seqexport exports a model with one sequence input and one output."
        )
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    if isinstance(model, keras.Sequential):
        return layers
    previous = None
    for index, layer in enumerate(layers):
        nodes = [n for n in layer._inbound_nodes if n.operation is layer]
        parents = [p.operation for n in nodes for p in n.parent_nodes]
        parents = [p for p in parents if not isinstance(p, keras.layers.InputLayer)]
        if len(nodes) != 1 or parents != ([previous] if previous is not None else []):
            raise UnsupportedModel(
                f"Layer {index} {layer.name!r} ({type(layer).__name__}) is not fed by the layer "
                "before it alone: seqexport exports a chain of layers (Sequential, or a "
                "functional model without branches or shared layers)."
            )
        previous = layer
    return layers


def _has_mask_source(layers) -> tuple[bool, float]:
    for layer in layers:
        if isinstance(layer, keras.layers.Masking):
            return True, float(layer.mask_value)
        if isinstance(layer, keras.layers.Embedding) and layer.mask_zero:
            return True, 0.0
    return False, 0.0


def _stateful_batch(layers) -> int | None:
    for layer in layers:
        if isinstance(layer, keras.layers.RNN) and layer.stateful:
            return int(layer.states[0].shape[0]) if getattr(layer, "states", None) else None
    return None


def _binder(model: keras.Model, masked_step: Callable) -> Callable:
    """`bind_step` for a Keras model: variables read once, outside the loop (StatelessScope)."""
    keras_variables = list(model.variables)

    def bind_step():
        mapping = [(v, v.value.read_value()) for v in keras_variables]

        def bound(x, prev_states, mask=None):
            with keras.StatelessScope(state_mapping=mapping):
                return masked_step(x, prev_states, mask)

        return bound

    return bind_step


def _is_step_model(model: keras.Model) -> bool:
    """A functional step model: inputs [x_t, *states], outputs [y_t, *new_states] (the seed's case 3)."""
    if len(model.inputs) < 2 or len(model.inputs) != len(model.outputs):
        return False
    shapes_in = [tuple(t.shape[1:]) for t in model.inputs[1:]]
    shapes_out = [tuple(t.shape[1:]) for t in model.outputs[1:]]
    return shapes_in == shapes_out and all(len(t.shape) == 2 for t in model.inputs)


def _from_step_model(model: keras.Model, description: str) -> StepModel:
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
        bind_step=_binder(model, masked_step),
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


def step_model_from_keras(model: keras.Model, description: str = "") -> StepModel:
    """Builds the step model of a Keras model made of RNN and per-step layers.

    Also takes a functional step model `Model([x_t, *states], [y_t, *new_states])`.

    Raises:
        UnsupportedModel: naming the first layer that cannot run step by step.
    """
    if not isinstance(model, keras.Model):
        raise UnsupportedModel(f"Expected a Keras model, got {type(model).__name__}.")
    if _is_step_model(model):
        return _from_step_model(model, description)
    layers = _sequence_layers(model)
    masked, pad_value = _has_mask_source(layers)
    stages: list[_Stage] = []
    sequence_ended = False
    for index, layer in enumerate(layers):
        if isinstance(layer, keras.layers.RNN):
            if sequence_ended:
                raise _fail(index, layer, "it follows an RNN without return_sequences, so it sees one step")
            stage = _rnn_stage(index, layer, masked)
            sequence_ended = stage.ends_sequence
        else:
            stage = _per_step_stage(index, layer)
        stages.append(stage)

    if not any(isinstance(l, keras.layers.RNN) for l in layers):
        raise UnsupportedModel(
            f"Model {model.name!r} has no RNN layer (SimpleRNN, GRU, LSTM or keras.layers.RNN); "
            "seqexport exports recurrent sequence models."
        )
    states = tuple(spec for stage in stages for spec in stage.states)
    # Stateless per-step layers after the last RNN (a Dense head, say) run once on the whole
    # sequence after the loop instead of once per step: fewer ops per iteration.
    last_stateful = max(i for i, stage in enumerate(stages) if stage.states)
    core_stages, head_stages = stages[: last_stateful + 1], stages[last_stateful + 1 :]

    def masked_step(x, prev_states, mask):
        return _run_stages(stages, x, prev_states, mask)

    def core_step(x, prev_states, mask=None):
        return _run_stages(core_stages, x, prev_states, mask)

    def head(y):
        for stage in head_stages:
            y, _ = stage.call(y, (), None)
        return y

    def step(x, prev_states):
        return masked_step(x, prev_states, None)

    def fused_core(inputs, prev_states):
        return _run_stages(core_stages, inputs, prev_states, None, whole_sequence=True)

    fusable = not masked and all(stage.sequence_call is not None for stage in core_stages)

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
    zero_states = tuple(tf.zeros((1, *s.shape)) for s in states)
    y, _ = step(probe, zero_states)
    core_y, _ = core_step(probe, zero_states)

    def reference(inputs, lengths=None):
        for layer in layers:
            if isinstance(layer, keras.layers.RNN) and layer.stateful:
                layer.reset_states()
        return model(inputs, training=False)

    variables = tuple(v.value for v in model.variables)
    trainable = tuple(v.value for v in model.trainable_variables)
    return StepModel(
        step_fn=step,
        masked_step_fn=masked_step if masked else None,
        bind_step=_binder(model, core_step if head_stages else masked_step),
        head=head if head_stages else None,
        fused_unroll=fused_core if fusable else None,
        core_output_shape=tuple(int(d) for d in core_y.shape[1:]) if head_stages else None,
        input_shape=input_shape,
        input_dtype=input_dtype,
        output_shape=tuple(int(d) for d in y.shape[1:]),
        output_dtype=y.dtype.name,
        states=states,
        variables=variables,
        trainable_variables=trainable,
        trainable_names=tuple(v.path for v in model.trainable_variables),
        last_step_only=sequence_ended,
        reference_fn=reference,
        mask_pad_value=pad_value,
        reference_batch=_stateful_batch(layers),
        input_vocab=next((l.input_dim for l in layers if isinstance(l, keras.layers.Embedding)), None),
        description=description or f"Keras model {model.name!r}",
    )
