"""Trace a `StepModel` into the signatures TF Serving sees (design.md, "Signatures").

The sequence signatures unroll the step in ONE `tf.while_loop` over `TensorArray`s
with `element_shape` set, the state threaded as loop variables with fixed shapes:
TF then keeps every step's activations for the backward pass, so gradients flow
through time and across chained `stream` calls. A model with a `fused_unroll` (a stack of LSTM, GRU
or SimpleRNN layers) runs `serving_default` and `stream` in whole-sequence runs instead,
and keeps the while_loop beside them as `<name>_unfused` signatures (exporter/fused.py
and exporter/recurrence.py say why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import traceback
from collections.abc import Callable

import tensorflow as tf

from exporter.artifact.errors import BadInput
from exporter.artifact.names import no_xla_name, unfused_name
from exporter.artifact.specs import SignatureName, SignatureSpec, TensorDesc
from exporter.recurrence import swap_batch_and_time
from exporter.step_model import StepModel


@dataclasses.dataclass(frozen=True)
class TracedExport:
    """The module to save, its signature functions, and their specs.

    `gradient_functions` are the same functions without XLA (identical to `functions`
    unless traced with `jit=True`): what gradients are taken through, second derivatives
    included. `unfused_functions` are the while_loop twins of fused signatures (empty when
    nothing is fused): what LiteRT and ONNX convert.
    """

    module: tf.Module
    functions: dict[str, tf.types.experimental.ConcreteFunction]
    gradient_functions: dict[str, tf.types.experimental.ConcreteFunction]
    specs: tuple[SignatureSpec, ...]
    unfused_functions: dict[str, tf.types.experimental.ConcreteFunction] = dataclasses.field(default_factory=dict)

    def higher_order_function(self, name: str):
        """The plainest function of signature `name`: its while_loop twin where it is fused (a golden
        of second derivatives where there is no source model to take them from)."""
        return self.unfused_functions.get(name, self.gradient_functions[name])


def _desc(name: str, shape, dtype: str) -> TensorDesc:
    return TensorDesc(name=name, shape=tuple(shape), dtype=dtype)


def unroll(model: StepModel, inputs, states: tuple, lengths=None, *, fused: bool = False, statics: tuple = (),
           sequences: tuple = ()):
    """Runs the step over `inputs [B, T, ...]` from `states`; returns (outputs [B, T, ...], states).

    `fused`: run the model's `fused_unroll` (whole-sequence kernels) instead of the loop.
    A model with several `outputs` returns a tuple of them, each `[B, T, ...]`. `statics`: the
    model's static inputs, read by every step. `sequences`: its other sequence inputs
    (`[B, T, ...]` each, the same T), sliced per step like `inputs`.
    """
    if fused:
        outputs, final = model.fused_unroll(inputs, tuple(states))  # the head included
        return outputs, tuple(final)
    time_major = swap_batch_and_time(inputs)
    steps = tf.shape(time_major)[0]
    input_ta = tf.TensorArray(
        inputs.dtype, size=steps, element_shape=tf.TensorShape([None, *model.input_shape])
    ).unstack(time_major)
    sequence_tas = _sequence_arrays(model, sequences, inputs)
    several = bool(model.outputs)
    if several:
        written = [(tuple(o.shape), o.dtype) for o in model.outputs]
    else:
        written = [(model.loop_output_shape(), model.loop_output_dtype())]
    output_tas = tuple(
        tf.TensorArray(tf.as_dtype(dtype), size=steps, element_shape=tf.TensorShape([None, *shape]))
        for shape, dtype in written
    )
    state_shapes = [tf.TensorShape([None, *s.shape]) for s in model.states]
    step = model.bound_step()  # outside the loop: variables are read here, once
    count = len(output_tas)

    def body(t, *carried):
        output_tas, state = carried[:count], carried[count:]
        x_t = input_ta.read(t)
        mask = None if lengths is None else t < lengths
        if mask is not None:  # a step past a row's length is padding, as if the client had padded it
            x_t = _padded_step(x_t, mask, model.mask_pad_value)
        extras = (*statics, *(ta.read(t) for ta in sequence_tas))
        y_t, new_state = step(x_t, tuple(state), mask, extras) if extras else step(x_t, tuple(state), mask)
        new_state = tuple(new_state)
        for tensor, shape in zip(new_state, state_shapes):
            tensor.set_shape(shape)
        ys = tuple(y_t) if several else (y_t,)
        return (t + 1, *(ta.write(t, y) for ta, y in zip(output_tas, ys)), *new_state)

    _, *carried = tf.while_loop(
        lambda t, *_: t < steps,
        body,
        (tf.constant(0), *output_tas, *states),
        maximum_iterations=steps,
    )
    output_tas, final = carried[:count], carried[count:]
    stacked = tuple(_stacked(ta, inputs, shape, dtype) for ta, (shape, dtype) in zip(output_tas, written))
    if several:
        return stacked, tuple(final)
    return model.apply_head(stacked[0]), tuple(final)


def _padded_step(x_t, keep, pad_value):
    """`x_t [B, ...]` where `keep [B]`, else `pad_value`: `lengths` then means what padding the inputs means to
    the source model, even where its mask does not reach every layer (an `Embedding(mask_zero=True)` merged
    with an unmasked input: Keras's merged mask keeps the step, and the pad id's embedding goes in)."""
    keep = tf.reshape(keep, tf.concat([tf.shape(keep), tf.ones([tf.rank(x_t) - 1], tf.int32)], 0))
    if not x_t.dtype.is_floating:
        return tf.where(keep, x_t, tf.cast(pad_value, x_t.dtype))
    # The pad value's derivative is the input's own there, as where the client padded (Keras's gradients).
    return x_t + tf.stop_gradient(tf.where(keep, tf.zeros_like(x_t), tf.cast(pad_value, x_t.dtype) - x_t))


def _sequence_arrays(model: StepModel, sequences: tuple, inputs) -> tuple:
    """One `TensorArray` of steps per other sequence input; a T other than `inputs`' fails the call naming it."""
    arrays = []
    for spec, sequence in zip(model.sequence_inputs, sequences):
        steps = tf.debugging.assert_equal(
            tf.shape(sequence)[1], tf.shape(inputs)[1],
            message=f"input {spec.name!r} must have as many steps (axis 1) as 'inputs'")
        with tf.control_dependencies([steps]):
            time_major = swap_batch_and_time(sequence)
        arrays.append(tf.TensorArray(sequence.dtype, size=tf.shape(time_major)[0],
                                     element_shape=tf.TensorShape([None, *spec.shape])).unstack(time_major))
    return tuple(arrays)


def _stacked(output_ta, inputs, shape, dtype):
    """`output_ta`'s steps as `[B, T, *shape]`."""
    # Stacked with the element shape known at run time (batch included): stacking an empty
    # list (T=0, which must return the state unchanged) fails on a partly unknown one.
    if tf.executing_eagerly():  # a reference run outside tf.function: a Python list underneath
        outputs = output_ta.stack()
    else:
        outputs = tf.raw_ops.TensorListStack(
            input_handle=output_ta.flow,
            element_shape=tf.stack([tf.shape(inputs)[0], *shape]),
            element_dtype=tf.as_dtype(dtype),
            num_elements=-1,
        )
        outputs.set_shape([None, None, *shape])
    return swap_batch_and_time(outputs)


def _with_fixed_steps(model: StepModel, inputs):
    """`inputs`, once the call is checked to have the model's fixed length (a whole-sequence signature of a
    model whose Input fixes T fails on any other, naming it, as the source model does)."""
    if model.fixed_steps is None:
        return inputs
    check = tf.debugging.assert_equal(
        tf.shape(inputs)[1], tf.constant(model.fixed_steps),
        message=f"'inputs' must have {model.fixed_steps} steps (axis 1): the model's input fixes its sequence "
                f"length to {model.fixed_steps}; stream sequences of other lengths through the 'stream' signature "
                "in chunks")
    with tf.control_dependencies([check]):
        return tf.identity(inputs)


def _zero_states(model: StepModel, batch) -> tuple:
    return tuple(tf.zeros(tf.stack([batch, *s.shape]), dtype=s.dtype) for s in model.states)


def initial_states(model: StepModel, batch, statics: tuple) -> tuple:
    """The states before the first step: from the static inputs where the model says so, else zeros."""
    if model.initial_states_fn is not None:
        return tuple(model.initial_states_fn(statics))
    return _zero_states(model, batch)


def _signature(inputs: list[TensorDesc], body: Callable, *, jit: bool = False) -> Callable:
    names = [t.name for t in inputs]
    specs = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in inputs]

    def fn(*args):
        return body(dict(zip(names, args)))

    return tf.function(fn, input_signature=specs, autograph=False, jit_compile=jit or None)


# Forward signatures XLA may compile; `initial_state` is too small to gain and gradients
# through XLA were measured slower and heavier (perf_baselines.md), so they stay as they are.
_JIT_SIGNATURES = (SignatureName.PREDICT, SignatureName.STREAM, SignatureName.STEP)
_FUSED_SIGNATURES = (SignatureName.PREDICT, SignatureName.STREAM)


@contextlib.contextmanager
def _untraceable(model: StepModel, signature: str):
    """A whole-sequence model's own call that TF cannot trace (Python code that needs a concrete batch or
    time length, data-dependent Python control flow): exit 2 naming the line, never a traceback."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001  the user's code can fail any way
        if model.streams:
            raise
        frames = traceback.extract_tb(exc.__traceback__)
        theirs = [f for f in frames if not any(part in f.filename for part in _LIBRARY_PATHS)]
        where = f" at {theirs[-1].filename}:{theirs[-1].lineno} ({theirs[-1].name}: {theirs[-1].line})" if theirs else ""
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise BadInput(
            f"{model.description}: TF cannot trace its call into the {signature!r} signature{where}: "
            f"{type(exc).__name__}: {first}. TF traces it once, with an unknown batch size and sequence length, and "
            "runs it as a graph: use tf.shape(x) (or keras.ops.shape) instead of x.shape, keras.ops/tf ops instead "
            "of Python loops or branches over tensor values, and no side effects on tensors.") from None


# Files of the libraries a traceback passes through on its way to the user's line.
_LIBRARY_PATHS = ("site-packages", f"{os.sep}exporter{os.sep}", "<frozen")


def will_fuse(model: StepModel, *, jit: bool, fused: bool) -> bool:
    """Whether `serving_default` and `stream` run the model's whole-sequence kernels (XLA has none)."""
    return fused and not jit and model.fused_unroll is not None  # StepModel refuses it with a mask


def trace(
    model: StepModel, *, with_input_gradients: bool = False, jit: bool = False, fused: bool = True
) -> TracedExport:
    """Builds the module with every signature of the export.

    Args:
        model: the step model.
        with_input_gradients: also build `input_gradients` (float inputs only).
        jit: compile the forward signatures with XLA (`jit_compile=True`).
        fused: use the model's `fused_unroll` where it has one (see `will_fuse`).

    Returns:
        A `TracedExport`; `module` tracks the variables (`trainable_variables` in a
        stable order, reachable after reload) and the signature functions.
    """
    state_descs = [_desc(s.name, (None, *s.shape), s.dtype) for s in model.states]
    x_desc = _desc("x", (None, *model.input_shape), model.input_dtype)
    # A whole-sequence model of a fixed length is traced at it (its call may need it known).
    steps = model.fixed_steps if not model.streams else None
    seq_desc = _desc("inputs", (None, *(() if model.text_input else (steps,)), *model.input_shape), model.input_dtype)
    lengths_desc = [_desc("lengths", (None,), "int32")] if model.masked else []
    out_seq = _desc("outputs", (None, None, *model.output_shape), model.output_dtype)
    out_last = _desc("outputs", (None, *model.output_shape), model.output_dtype)
    state_names = [s.name for s in model.states]
    static_descs = [_desc(i.name, (None, *i.shape), i.dtype) for i in model.static_inputs]
    sequence_descs = [_desc(i.name, (None, i.steps if i.steps and i.steps > 0 else None, *i.shape), i.dtype)
                      for i in model.sequence_inputs]
    slice_descs = [_desc(i.name, (None, *i.shape), i.dtype) for i in model.sequence_inputs]
    context_descs = [_desc(i.name, (None, i.steps if i.steps > 0 else None, *i.shape), i.dtype)
                     for i in model.context_inputs]

    def statics_of(feed) -> tuple:
        return tuple(feed[i.name] for i in model.static_inputs)

    def initial_of(feed) -> tuple:  # what the initial states are computed from: statics, then contexts
        return tuple(feed[i.name] for i in model.initial_inputs)

    def sequences_of(feed) -> tuple:
        return tuple(feed[i.name] for i in model.sequence_inputs)

    def state_outputs(states) -> dict:
        return dict(zip(state_names, states))

    def named(outputs, *, last: bool = False) -> dict:
        """The output(s) by serving key; `last`: each last-step output at its last step."""
        if not model.outputs:
            return {"outputs": outputs[:, -1] if last and model.last_step_only else outputs}
        return {o.name: (y[:, -1] if last and o.last_step else y) for o, y in zip(model.outputs, outputs)}

    def predict_outputs(feed, fused=False):
        inputs = _with_fixed_steps(model, feed["inputs"])
        statics = statics_of(feed)
        if not model.streams:  # the model's own whole-sequence call: its outputs as they come, no state
            outputs = model.sequence_fn(inputs, feed.get("lengths"), (*statics, *sequences_of(feed)))
            return (named(outputs) if model.outputs else {"outputs": outputs}), ()
        outputs, final = unroll(
            model, inputs, initial_states(model, tf.shape(inputs)[0], initial_of(feed)), feed.get("lengths"), fused=fused,
            statics=statics, sequences=sequences_of(feed),
        )
        return named(outputs, last=True), final

    def predict(feed, fused=False):
        outputs, final = predict_outputs(feed, fused)
        return {**outputs, **state_outputs(final)}

    def stream(feed, fused=False):
        states = tuple(feed[n] for n in state_names)
        outputs, final = unroll(model, feed["inputs"], states, feed.get("lengths"), fused=fused,
                                statics=statics_of(feed), sequences=sequences_of(feed))
        return {**named(outputs), **state_outputs(final)}

    def step(feed):
        states = tuple(feed[n] for n in state_names)
        extras = (*statics_of(feed), *sequences_of(feed))  # `step` takes one step of each sequence input
        bound = model.bound_step()
        y, new = bound(feed["x"], states, None, extras) if extras else bound(feed["x"], states)
        if model.outputs:
            return {**{o.name: value for o, value in zip(model.outputs, y)}, **state_outputs(new)}
        y = model.apply_head(y)
        return {"y": y, **state_outputs(new)}

    def initial_state(feed):
        values = initial_of(feed)
        checks = [tf.debugging.assert_equal(
            tf.shape(value)[0], feed["batch_size"],
            message=f"input {spec.name} must have batch_size rows (axis 0): the states start from it, one row each")
            for spec, value in zip(model.initial_inputs, values)]
        with tf.control_dependencies(checks):
            return state_outputs(tuple(tf.identity(s) for s in initial_states(model, feed["batch_size"], values)))

    def input_gradients(feed):
        inputs = feed["inputs"]
        others = [(i.name, feed[i.name]) for i in (*model.sequence_inputs, *model.context_inputs)
                  if i.dtype.startswith("float")]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            for _, tensor in others:
                tape.watch(tensor)
            outputs, _ = predict_outputs(feed)
            if model.outputs:
                total = tf.add_n([tf.reduce_sum(y) for y in outputs.values()])
            else:
                total = tf.reduce_sum(outputs["outputs"])
        grads = tape.gradient(total, [inputs, *(t for _, t in others)])
        return {"input_gradients": grads[0],
                **{f"input_gradients_{name}": g for (name, _), g in zip(others, grads[1:])}}

    if model.outputs:
        seq_outputs = [_desc(o.name, (None, None, *o.shape), o.dtype) for o in model.outputs]
        predict_descs = [_desc(o.name, (None, *o.shape) if o.last_step else (None, None, *o.shape), o.dtype)
                         for o in model.outputs]
        step_outputs = [_desc(o.name, (None, *o.shape), o.dtype) for o in model.outputs]
    else:
        seq_outputs = [out_seq]
        predict_descs = [out_last if model.last_step_only else out_seq]
        step_outputs = [_desc("y", (None, *model.output_shape), model.output_dtype)]
    table = [
        (SignatureName.PREDICT, [seq_desc, *sequence_descs, *static_descs, *context_descs, *lengths_desc], predict,
         [*predict_descs, *state_descs]),
        (SignatureName.STREAM, [seq_desc, *sequence_descs, *static_descs, *state_descs, *lengths_desc], stream,
         [*seq_outputs, *state_descs]),
        (SignatureName.STEP, [x_desc, *slice_descs, *static_descs, *state_descs], step,
         [*step_outputs, *state_descs]),
        (SignatureName.INITIAL_STATE, [_desc("batch_size", (), "int32"), *static_descs, *context_descs],
         initial_state, state_descs),
    ]
    if not model.streams:  # whole-sequence only: no state to stream, step or start
        table = table[:1]
    if with_input_gradients:
        table.append(
            (SignatureName.INPUT_GRADIENTS, [seq_desc, *sequence_descs, *static_descs, *context_descs,
                                             *lengths_desc],
             input_gradients, [_desc("input_gradients", seq_desc.shape, seq_desc.dtype),
                               *(_desc(f"input_gradients_{d.name}", d.shape, d.dtype)
                                 for d in (*sequence_descs, *context_descs) if d.dtype.startswith("float"))])
        )

    module = tf.__internal__.tracking.AutoTrackable()
    module.variables = list(model.variables)
    module.trainable_variables = list(model.trainable_variables)
    module.resources = list(model.trackables)  # lookup tables the functions read
    functions, gradient_functions, unfused_functions, specs = {}, {}, {}, []
    fuse = will_fuse(model, jit=jit, fused=fused)
    for name, inputs, body, outputs in table:
        if fuse and name in _FUSED_SIGNATURES:
            unfused = _signature(inputs, body)
            unfused_functions[name.value] = functions[unfused_name(name.value)] = unfused.get_concrete_function()
            body = functools.partial(body, fused=True)
        function = _signature(inputs, body)
        with _untraceable(model, name.value):
            gradient_functions[name.value] = function.get_concrete_function()
        if jit and name in _JIT_SIGNATURES:
            # XLA cannot hand a TensorList to TF's backward pass, so gradients go through
            # the same function without XLA, kept beside it as `<name>_no_xla`.
            setattr(module, no_xla_name(name.value), function)
            function = _signature(inputs, body, jit=True)
        setattr(module, name.value, function)
        functions[name.value] = function.get_concrete_function()
        specs.append(SignatureSpec(name=name.value, inputs=tuple(inputs), outputs=tuple(outputs)))
    return TracedExport(module=module, functions=functions, gradient_functions=gradient_functions,
                        specs=tuple(specs), unfused_functions=unfused_functions)

