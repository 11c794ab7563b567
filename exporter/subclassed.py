"""A subclassed Keras model whose `call` runs RNN layers over the sequence: streamed on explicit states.

Its `call` is Python code, so there is no graph of layers to take apart. But the state it carries
from one chunk to the next is the state of its RNN layers: while `call` runs on a chunk, each RNN
layer starts from the state the signature hands it and hands back its final one (the layer itself
runs as it always does, over the chunk). Whether the code around the RNN layers acts on each step
alone (an `Embedding`, a `Dense`: the TensorFlow text-generation tutorial's `MyModel`) or mixes
steps (a Python loop over time, a feedback model, a `Bidirectional`) is not read from the code
but measured: a probe sequence fed in chunks must give the whole call's numbers, or the model is
exported whole-sequence instead (exporter/whole_sequence.py). The verification proves it again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from exporter.artifact.errors import CannotStream, UnsupportedModel
from exporter.artifact.specs import StateSpec
from exporter.keras_step import STATE_NAMES
from exporter.step_model import StepModel

# Probe sequences: long enough for uneven chunks (2 + 3 + 1) and a step at a time.
_PROBE_STEPS = 6
_PROBE_CHUNKS = (0, 2, 5, 6)
# A streamed chunk must match the whole call this closely (relative to the outputs' scale).
_PROBE_RTOL = 1e-5


def call_signature(model: keras.Model) -> tuple[tuple[int, ...], str, int | None, int | None]:
    """(per-step input shape, dtype, vocabulary, the length of its first call) of a subclassed model: from
    the shape of the first batch it was called on, its time length left free; token ids when it holds an
    `Embedding` and was called on `[B, T]`.

    Raises:
        UnsupportedModel: it was never called, takes several inputs, or its input has no time axis.
    """
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    what = f"Model {model.name!r} ({type(model).__name__}) is a subclassed keras.Model"
    if not model.built or not shapes:
        raise UnsupportedModel(
            f"{what} whose input shape Keras did not record: it was never called, or its call() cannot be traced "
            "with symbolic tensors (Python control flow on tensor values, `.numpy()`, Python side effects), which "
            "Keras tries on its first call and every export needs. Call it once on a batch (`model(x)`), and write "
            "such lines with keras.ops/tf ops (`keras.ops.cond`, `tf.where`) instead.")
    if len(shapes) != 1:
        raise UnsupportedModel(f"{what} with several inputs ({', '.join(shapes)}): wrap it in a functional model "
                               "(`keras.Model(inputs, model(inputs))`) whose inputs name them.")
    (shape,) = (tuple(s) for s in shapes.values())
    if len(shape) < 2:
        raise UnsupportedModel(f"{what} called on {list(shape)}: no time axis; seqexport exports sequence models.")
    embedding = next((l for l in model._flatten_layers(include_self=False) if isinstance(l, keras.layers.Embedding)),
                     None)
    ids = embedding is not None and len(shape) == 2
    dtype = "int32" if ids else keras.backend.standardize_dtype(model.input_dtype)
    return (tuple(int(d) for d in shape[2:]), dtype, int(embedding.input_dim) if ids else None,
            None if shape[1] is None else int(shape[1]))


def variables_read_once(model: keras.Model):
    """Within: every variable of `model` reads as the value it had on entry, read there, once.

    Why: an RNN layer's loop that reads a variable inside it cannot be differentiated twice after a reload
    ("Tried to take gradients (or similar) of a variable without handle data"); read outside the loop,
    what the loop captures is a tensor (exporter/keras_step.py's `step_binder` does the same).
    """
    return keras.StatelessScope(state_mapping=[(v, tf.convert_to_tensor(v.value)) for v in model.variables])


class _Carried:
    """Each RNN layer's state while `call` runs: it starts from `states` and leaves its final one."""

    def __init__(self, layers: list, specs: dict):
        self.layers = layers
        self.specs = specs  # layer -> its StateSpecs
        self.states: dict = {}

    @contextlib.contextmanager
    def into(self, states: dict):
        """Within: each RNN layer's `call` starts from `states[layer]` and writes its final states back."""
        self.states = dict(states)
        originals = {id(layer): layer.call for layer in self.layers}
        for layer in self.layers:
            layer.call = self._stepping(layer, originals[id(layer)])
        try:
            yield self
        finally:
            for layer in self.layers:
                del layer.call  # the class's own again

    def _stepping(self, layer, original: Callable) -> Callable:
        def call(sequences, initial_state=None, mask=None, training=False, **kwargs):
            returned = layer.return_state
            layer.return_state = True  # its final states, whether the model reads them or not
            try:
                output, *final = original(sequences, initial_state=list(self.states[layer]), mask=mask,
                                          training=training, **kwargs)
            finally:
                layer.return_state = returned
            self.states[layer] = tuple(final)
            return [output, *final] if returned else output

        return call


def subclassed_step_model(model: keras.Model, description: str = "") -> StepModel:
    """A subclassed model streamed on its RNN layers' states (module docstring).

    Raises:
        CannotStream: it has no RNN layer, returns no sequence, or its probe streamed in chunks gives other
            numbers than its whole call (it mixes steps outside its RNN layers).
        UnsupportedModel: its input cannot be known (see `call_signature`).
    """
    input_shape, input_dtype, vocab, _ = call_signature(model)
    name = f"model {model.name!r} ({type(model).__name__})"
    layers = [l for l in model._flatten_layers(include_self=False)
              if isinstance(l, keras.layers.RNN) and not isinstance(l, keras.layers.Bidirectional)]
    if not layers:
        raise CannotStream(f"Model {model.name!r} ({type(model).__name__}) is subclassed and has no RNN layer to carry a "
                           "state from chunk to chunk: seqexport streams a subclassed model on its RNN layers' states. "
                           "Use keras.layers.RNN (or LSTM, GRU, ...) over the sequence, or write a step-model factory "
                           "(`seqexport export package.module:factory`, see the README).",
                           why=f"{name} is subclassed and has no RNN layer: nothing carries a state from chunk to chunk")
    specs = {layer: _state_specs(layer) for layer in layers}
    states = tuple(s for layer in layers for s in specs[layer])
    carried = _Carried(layers, specs)

    def stream(inputs, prev):
        by_layer, offset = {}, 0
        for layer in layers:
            count = len(specs[layer])
            by_layer[layer], offset = tuple(prev[offset:offset + count]), offset + count
        with variables_read_once(model), carried.into(by_layer):
            outputs = model(inputs, training=False)
            final = tuple(s for layer in layers for s in carried.states[layer])
        return outputs, final

    def step(x, prev):
        outputs, final = stream(x[:, None], prev)
        return outputs[:, 0], final

    def reference(inputs, lengths=None):
        return model(inputs, training=False)

    output = _probe_streaming(model, name, stream, reference, input_shape, input_dtype, vocab, states)
    return StepModel(
        step_fn=step,
        fused_unroll=lambda inputs, prev: stream(inputs, tuple(prev)),
        input_shape=input_shape,
        input_dtype=input_dtype,
        output_shape=tuple(int(d) for d in output.shape[2:]),
        output_dtype=output.dtype.name,
        states=states,
        variables=tuple(v.value for v in model.variables),
        trainable_variables=tuple(v.value for v in model.trainable_variables),
        trainable_names=tuple(v.path for v in model.trainable_variables),
        reference_fn=reference,
        input_vocab=vocab,
        description=description or f"Keras model {model.name!r} ({type(model).__name__})",
    )


def _state_specs(layer) -> tuple[StateSpec, ...]:
    zeros = tf.nest.flatten(layer.cell.get_initial_state(batch_size=1))
    labels = STATE_NAMES.get(type(layer.cell).__name__, tuple(f"state{i}" for i in range(len(zeros))))
    return tuple(StateSpec(name=f"{layer.name}_{label}", layer=layer.name, index=i,
                           shape=tuple(int(d) for d in zero.shape[1:]), dtype=zero.dtype.name)
                 for i, (label, zero) in enumerate(zip(labels, zeros)))


def _probe_streaming(model, name: str, stream, reference, input_shape, input_dtype, vocab, states):
    """The whole call on a probe sequence, once it is shown that the stream in uneven chunks and a step at a
    time gives the same numbers."""
    rng = np.random.default_rng(17)
    shape = (2, _PROBE_STEPS, *input_shape)
    probe = tf.constant(rng.integers(1, vocab or 10, size=shape).astype(input_dtype) if "int" in input_dtype
                        else rng.normal(size=shape).astype(input_dtype))
    whole = reference(probe)
    if not tf.is_tensor(whole) or len(whole.shape) < 3 or whole.shape[1] != _PROBE_STEPS:
        why = (f"{name} is subclassed and returns {getattr(whole, 'shape', type(whole).__name__)} for a "
               f"[2, {_PROBE_STEPS}, ...] probe, not one output per step")
        raise CannotStream(f"{why[0].upper()}{why[1:]}: there is no sequence to stream.", why=why)
    for label, bounds in (("in chunks of 2, 3 and 1 steps", _PROBE_CHUNKS), ("a step at a time", range(_PROBE_STEPS + 1))):
        prev = tuple(tf.zeros((2, *s.shape), s.dtype) for s in states)
        pieces = []
        for start, stop in zip(list(bounds)[:-1], list(bounds)[1:]):
            out, prev = stream(probe[:, start:stop], prev)
            pieces.append(out)
        streamed = tf.concat(pieces, axis=1)
        scale = 1.0 + float(tf.reduce_max(tf.abs(tf.cast(whole, tf.float64))))
        worst = float(tf.reduce_max(tf.abs(tf.cast(streamed, tf.float64) - tf.cast(whole, tf.float64))))
        if worst > _PROBE_RTOL * scale:
            why = (f"{name} is subclassed, and streamed {label} on its RNN layers' states its probe gives other "
                   f"numbers than its whole call (max abs difference {worst:.2e}): its call() mixes steps outside its "
                   "RNN layers")
            raise CannotStream(f"{why[0].upper()}{why[1:]}.", why=why)
    return whole
