"""A Keras model that cannot run step by step, exported whole-sequence: its own call over the sequence.

Streaming stays the first choice: exporter/keras_model.py rebuilds the model step by step first
and comes here only when that finds a layer that truly mixes time steps, or nothing to carry
from one step to the next (`CannotStream`, which names the layer and what its probe found). Such
a model still gets what every model needs: a verified export with `serving_default` (and
`input_gradients` on request) under the keys a streaming export has (`inputs`, `lengths` for a
masked model, `outputs` or each output by name, other inputs by their Keras names), published
atomically, served, converted. Keras's own `model.export()` traces the same call, and checks
nothing.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.src.models.functional import Functional

from exporter.artifact.errors import UnsupportedModel
from exporter.artifact.specs import InputSpec, OutputSpec
from exporter.graph_masks import mask_inputs
from exporter.keras_graph import has_time_axis, named_reference, output_names, reference_with_extras, vocab_of
from exporter.keras_step import fixed_steps, keras_reference, mask_source, stateful_batch
from exporter.step_model import StepModel
from exporter.subclassed import call_signature, variables_read_once


def whole_sequence_model(model: keras.Model, why: str, description: str = "") -> StepModel:
    """`model` as a whole-sequence `StepModel`: `sequence_fn` is its own call.

    Args:
        why: why it cannot stream (the layer and what its probe found), for the report.

    Raises:
        UnsupportedModel: no input has a time axis, or an input or output cannot be a serving key.
    """
    if not isinstance(model, (keras.Sequential, Functional)):
        return _subclassed(model, why, description)
    layers = _all_layers(model)
    graph = getattr(model, "_functional", None) or model  # a Sequential's layers as a functional graph
    main, statics, sequences = _split_inputs(graph)
    strings = str(main.dtype) == "string"
    tokens = strings and has_time_axis(graph, main)  # `[B, T]` string tokens; else raw text `[B, 1]`
    text = strings and not tokens
    masked, pad_value = mask_source(layers)
    given = {id(t) for t in mask_inputs(graph)}
    main_steps = main.shape[1]
    static_specs = tuple(_input_spec(graph, t, has_time=False) for t in statics)
    sequence_specs = tuple(_input_spec(graph, t, has_time=True, main_steps=main_steps, mask=id(t) in given)
                           for t in sequences)
    reference = keras_reference(model, layers)
    if statics or sequences:
        reference = reference_with_extras(model, reference, main, [*statics, *sequences])
    several = len(model.outputs) > 1
    names = output_names(model) if several else ["outputs"]
    outputs = tuple(_output_spec(model, name, t, main_steps) for name, t in zip(names, graph.outputs))
    if several:
        reference = named_reference(reference, outputs)

    def sequence_fn(inputs, lengths=None, extras=()):
        if lengths is not None:  # steps past a row's length padded, as a client pads them: the model masks them
            inputs = _padded_past(inputs, lengths, pad_value)
        with variables_read_once(model):
            result = reference(inputs, lengths, extras) if extras else reference(inputs, lengths)
        return tuple(result[o.name] for o in outputs) if several else result

    first = outputs[0]
    return StepModel(
        step_fn=None,
        sequence_fn=sequence_fn,
        whole_sequence_reason=why,
        sequence_masked=masked and not strings,  # strings: no pad value a client would send
        mask_pad_value=pad_value,
        input_shape=tuple(int(d) for d in main.shape[1 if text else 2:]),
        input_dtype=tf.as_dtype(main.dtype).name,
        text_vocabulary=_vocabulary(layers) if strings else (),
        text_tokens=tokens,
        trackables=tuple(l for l in layers if ".preprocessing." in type(l).__module__),
        output_shape=first.shape,
        output_dtype=first.dtype,
        last_step_only=not several and first.last_step,
        outputs=outputs if several else (),
        states=(),
        variables=tuple(v.value for v in model.variables),
        trainable_variables=tuple(v.value for v in model.trainable_variables),
        trainable_names=tuple(v.path for v in model.trainable_variables),
        reference_fn=reference,
        reference_batch=stateful_batch(layers),
        reference_steps=None if text else fixed_steps(model, main),
        fixed_steps=None if text else fixed_steps(model, main),
        input_vocab=vocab_of(graph, main) if "int" in str(main.dtype) else None,
        description=description or f"Keras model {model.name!r}",
        static_inputs=static_specs,
        sequence_inputs=sequence_specs,
    )


def _vocabulary(layers) -> tuple[str, ...]:
    """The words of the first `TextVectorization` (or `StringLookup`): what text probes are made of."""
    for layer in layers:
        if isinstance(layer, (keras.layers.TextVectorization, keras.layers.StringLookup)):
            words = [w for w in layer.get_vocabulary() if w and not w.startswith("[")]
            if words:
                return tuple(words)
    return ("a",)


def _all_layers(model: keras.Model) -> list:
    """Every layer, nested models' included (a masking layer may sit inside a nested encoder)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
        elif not isinstance(layer, keras.layers.InputLayer):
            found.append(layer)
    return found


def _split_inputs(model: keras.Model):
    """(the main sequence input, the inputs without a time axis, the other inputs with one): as a
    streaming export takes them, except that the others may have time lengths of their own."""
    masks = {id(t) for t in mask_inputs(model)}
    timed = [t for t in model.inputs if id(t) in masks or has_time_axis(model, t)]
    main = next((t for t in timed if id(t) not in masks), None)
    if main is None:  # raw text: a `TextVectorization` inside makes the sequence
        main = next((t for t in model.inputs if str(t.dtype) == "string"), None)
        timed = [] if main is None else [main]
    if main is None:
        found = ", ".join(f"{t.name} {list(t.shape)}" for t in model.inputs)
        raise UnsupportedModel(
            f"Model {model.name!r} has {len(model.inputs)} input(s) ({found}) and none has a time axis; seqexport "
            "exports sequence models (an input [B, T, ...], or token ids [B, T]).")
    return main, [t for t in model.inputs if all(t is not s for s in timed)], [t for t in timed if t is not main]


def _input_spec(model: keras.Model, tensor, *, has_time: bool, main_steps=None, mask: bool = False) -> InputSpec:
    dtype = tf.as_dtype(tensor.dtype).name
    shape = tuple(tensor.shape[2:] if has_time else tensor.shape[1:])
    steps = None
    if has_time and tensor.shape[1] != main_steps:
        steps = -1 if tensor.shape[1] is None else int(tensor.shape[1])
    try:
        if any(d is None for d in shape):
            raise ValueError(f"its shape {list(tensor.shape)} has an unknown dimension besides batch and time")
        return InputSpec(name=tensor.name, shape=tuple(int(d) for d in shape), dtype=dtype, mask=mask, steps=steps,
                         vocab=vocab_of(model, tensor) if dtype.startswith("int") and not mask else None)
    except ValueError as exc:
        raise UnsupportedModel(f"Model {model.name!r}: input {tensor.name!r} cannot be a serving key ({exc}). Name the "
                               "keras.Input (`name=`) with letters, digits and `_`, and give every feature size.") from None


def _output_spec(model: keras.Model, name: str, tensor, main_steps) -> OutputSpec:
    """An output with a time axis (`[B, T, ...]`, T the main input's) by its shape per step; one without
    (a class, a summary) by its whole shape, `last_step` (what `serving_default` returns as it is)."""
    shape = tuple(tensor.shape)
    has_time = len(shape) >= 3 and shape[1] == main_steps
    try:
        return OutputSpec(name=name, shape=shape[2:] if has_time else shape[1:], dtype=tf.as_dtype(tensor.dtype).name,
                          last_step=not has_time)
    except ValueError as exc:
        raise UnsupportedModel(f"Model {model.name!r}: output {name!r} cannot be a serving key ({exc}). Return a "
                               "dict of outputs with other keys.") from None


def _padded_past(inputs, lengths, pad_value):
    """`inputs [B, T, ...]` with every step at or past its row's length set to `pad_value`."""
    steps = tf.range(tf.shape(inputs)[1])
    keep = steps[None, :] < tf.cast(lengths, steps.dtype)[:, None]
    keep = tf.reshape(keep, tf.concat([tf.shape(keep), tf.ones([tf.rank(inputs) - 2], tf.int32)], 0))
    if not inputs.dtype.is_floating:
        return tf.where(keep, inputs, tf.cast(pad_value, inputs.dtype))
    # The pad value's derivative is the input's own there, as where the client padded (Keras's gradients).
    return inputs + tf.stop_gradient(tf.where(keep, tf.zeros_like(inputs), tf.cast(pad_value, inputs.dtype) - inputs))


# A subclassed model is probed on sequences this long (its own length is free: any T is served).
_PROBE_STEPS = 5


def _subclassed(model: keras.Model, why: str, description: str) -> StepModel:
    """A subclassed model's `call`, traced as Keras's own export traces it (`subclassed.call_signature`)."""
    input_shape, input_dtype, vocab, first_steps = call_signature(model)

    def reference(inputs, lengths=None, extras=()):
        return model(inputs, training=False)

    def call(inputs, lengths=None, extras=()):
        with variables_read_once(model):
            return model(inputs, training=False)

    probe = tf.zeros((2, _PROBE_STEPS, *input_shape), input_dtype)
    try:
        result = call(probe)
    except Exception as exc:  # noqa: BLE001  the user's call(): say what it did
        raise UnsupportedModel(f"Model {model.name!r} ({type(model).__name__}) fails on a [2, {_PROBE_STEPS}, ...] "
                               f"{input_dtype} probe: {type(exc).__name__}: {str(exc).strip()[:300]}") from None
    if not tf.is_tensor(result):
        raise UnsupportedModel(f"Model {model.name!r} ({type(model).__name__}) returns {type(result).__name__}, not "
                               "one tensor: wrap it in a functional model that returns a tensor or a dict of them.")
    has_time = len(result.shape) >= 3 and result.shape[1] == _PROBE_STEPS
    output_shape = tuple(int(d) for d in (result.shape[2:] if has_time else result.shape[1:]))
    # A `call` that needs a known length (a Python loop over `x.shape[1]`) keeps the one it was built with.
    fixed = None if _traces(call, input_shape, input_dtype) else first_steps
    return StepModel(
        step_fn=None,
        sequence_fn=call,
        whole_sequence_reason=why,
        input_shape=input_shape,
        input_dtype=input_dtype,
        output_shape=output_shape,
        output_dtype=result.dtype.name,
        last_step_only=not has_time,
        states=(),
        variables=tuple(v.value for v in model.variables),
        trainable_variables=tuple(v.value for v in model.trainable_variables),
        trainable_names=tuple(v.path for v in model.trainable_variables),
        reference_fn=reference,
        reference_steps=fixed,
        fixed_steps=fixed,
        input_vocab=vocab,
        description=description or f"Keras model {model.name!r} ({type(model).__name__})",
    )


def _traces(call, input_shape: tuple, dtype: str) -> bool:
    """Whether TF traces `call` with an unknown batch size and sequence length."""
    spec = tf.TensorSpec([None, None, *input_shape], dtype)
    try:
        tf.function(call, input_signature=[spec], autograph=False).get_concrete_function()
    except Exception:  # noqa: BLE001  whatever the user's call() does with an unknown length
        return False
    return True
