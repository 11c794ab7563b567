"""Rebuild a functional Keras model that is not a chain: branches, merges, residual adds, shared layers.

Node by node, in the model's own topological order, each node becomes one step of the
step function: a recurrent layer runs its cell (its final states are outputs a later
node may read, `return_state=True`), a causal convolution its ring buffer, any other
one-input layer what exporter/time_probe.py allows, and a merge (`Add`, `Concatenate`,
`Multiply`, `Average`, ...) its own call on the per-step tensors. Every tensor is either
per step or the last step (after an RNN without `return_sequences`, or a returned
state); a node may not mix the two, and no RNN runs over a last step.

The inputs are one main sequence, any other sequences on its time axis (sliced per step
with it) and any static inputs (no time axis, seen at every step). A mask runs beside the
calls, node by node, as Keras computes it (exporter/graph_masks.py).

A chain keeps the faster rebuild of exporter/keras_step.py (a head after the loop,
fused kernels); this one runs every node inside the `tf.while_loop`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend import set_keras_mask  # how Keras hands a mask between layers: no public API

from exporter.artifact.errors import SeqExportError, UnsupportedModel
from exporter.artifact.specs import InputSpec, OutputSpec, StateSpec
from exporter.causal import Clock, cached_attention, clocked
from exporter.context import find_context
from exporter.graph_masks import data_tensors, mask_inputs, mask_only_nodes, mask_rule
from exporter.keras_step import (
    STATE_NAMES,
    cannot_stream,
    fixed_steps,
    keras_reference,
    layer_refusal,
    mask_source,
    per_step_stage,
    probe_step,
    rnn_stage,
    stateful_batch,
    step_binder,
    with_position,
)
from exporter.step_model import StepModel
from exporter.subclassed import variables_read_once
from exporter.time_probe import PROBE_STEPS, one_step_mismatch, probe_input

PER_STEP, LAST_STEP, STATIC = "per step", "last step", "static"
# A static input (no time axis) and what is computed from it alone: the same at every step.


@dataclasses.dataclass(frozen=True)
class _GraphNode:
    """One call of a layer: which tensors it reads, which it writes, its states."""

    layer: object
    inputs: tuple[int, ...]   # ids of the KerasTensors it reads
    outputs: tuple[int, ...]  # ids of the KerasTensors it writes
    kinds: tuple[str, ...]    # PER_STEP or LAST_STEP, of each output
    states: tuple[StateSpec, ...]
    call: Callable            # (inputs list, states, mask) -> (outputs list, new states)
    initial: tuple[int, ...] = ()  # ids of the static tensors an RNN's `initial_state=` reads


def _error(index: int, layer, why: str) -> UnsupportedModel:
    return layer_refusal(index, layer, why)


def _renamed(states: tuple[StateSpec, ...], layer, node_index: int) -> tuple[StateSpec, ...]:
    """A layer called at several places has one set of states per call: `<layer>_<call>_<label>`."""
    if len(layer._inbound_nodes) <= 1:
        return states
    prefix = f"{layer.name}_"
    return tuple(dataclasses.replace(s, name=f"{layer.name}_{node_index}_{s.name[len(prefix):]}") for s in states)


def _node(index: int, node, kinds: dict[int, str], clock: Clock) -> _GraphNode:
    layer = node.operation
    inputs = tuple(id(t) for t in data_tensors(node))
    outputs = tuple(id(t) for t in node.outputs)
    node_index = layer._inbound_nodes.index(node)
    if isinstance(layer, keras.layers.RNN) and len(inputs) > 1:
        return _rnn_with_initial_state(index, node, kinds, node_index)
    in_kinds = {kinds[i] for i in inputs}
    if STATIC in in_kinds:
        return _static_node(index, node, in_kinds)
    if len(in_kinds) > 1:
        raise _error(index, layer, "it merges a per-step tensor with a last-step one (the output of an RNN "
                     "without return_sequences, or a returned state)")
    in_kind = in_kinds.pop()
    if isinstance(layer, keras.layers.RNN):
        if in_kind == LAST_STEP:
            raise _error(index, layer, "it reads a last-step tensor, so there is no sequence left to step through")
        stage = rnn_stage(index, layer, masked=False)

        def rnn_call(values, states, mask, stage=stage):
            output, new = stage.call(values[0], states, mask)
            return [output, *new][: len(outputs)], new

        # A returned state is the state after each step: to a later node, the last step's.
        kinds = (PER_STEP if layer.return_sequences else LAST_STEP,) + (LAST_STEP,) * (len(outputs) - 1)
        return _GraphNode(layer, inputs, outputs, kinds, _renamed(stage.states, layer, node_index), rnn_call)
    if in_kind == PER_STEP and isinstance(layer, keras.layers.MultiHeadAttention):
        return _cached_attention_node(index, node, clock, node_index)
    if len(inputs) > 1 or not isinstance(layer, keras.layers.Layer):
        # A merge (`Add`, `Concatenate`, ...) or a Keras op (`a + b`, `x[:, :, :2]`): its own call,
        # on tensors of one step given a time axis of 1, once a probe shows that is the same.
        if in_kind == PER_STEP:
            why = _why_not_per_step_node(node)
            if why is not None:
                raise _error(index, layer, why)
        return _GraphNode(layer, inputs, outputs, (in_kind,), (), _op_call(node, per_step=in_kind == PER_STEP))
    stage = per_step_stage(index, layer, after_sequence=in_kind == LAST_STEP, clock=clock)  # causal convs,
    # causal attention and position layers included

    def call(values, states, mask, stage=stage):
        output, new = stage.call(values[0], states, mask)
        return [output], new

    return _GraphNode(layer, inputs, outputs, (in_kind,), _renamed(stage.states, layer, node_index), call)


def _rnn_with_initial_state(index: int, node, kinds: dict[int, str], node_index: int) -> _GraphNode:
    """An RNN called with `initial_state=` computed from static inputs: its states start there."""
    layer = node.operation
    tensors = data_tensors(node)
    sequence, initial = id(tensors[0]), tuple(id(t) for t in tensors[1:])
    if kinds[sequence] != PER_STEP:
        raise _error(index, layer, "it reads a last-step or static tensor, so there is no sequence to step through")
    if any(kinds[i] != STATIC for i in initial):
        raise _error(index, layer, "its `initial_state=` is computed from the sequence it steps through (the "
                     "final state of an RNN over the same sequence, say); states are set from static inputs, or "
                     "from context inputs with a time axis of their own (an encoder's source sequence)")
    stage = rnn_stage(index, layer, masked=False)
    if len(initial) != len(stage.states):
        raise _error(index, layer, f"its `initial_state=` has {len(initial)} tensors for {len(stage.states)} states")
    outputs = tuple(id(t) for t in node.outputs)

    def rnn_call(values, states, mask, stage=stage):
        output, new = stage.call(values[0], states, mask)
        return [output, *new][: len(outputs)], new

    out_kinds = (PER_STEP if layer.return_sequences else LAST_STEP,) + (LAST_STEP,) * (len(outputs) - 1)
    return _GraphNode(layer, (sequence, *initial), outputs, out_kinds, _renamed(stage.states, layer, node_index),
                      rnn_call, initial=initial)


def _cached_attention_node(index: int, node, clock: Clock, node_index: int) -> _GraphNode:
    """`MultiHeadAttention` called on per-step tensors (self-attention: `mha(h, h, use_causal_mask=True)`):
    stepped on its key/value cache once a probe shows it is causal (exporter/causal.py)."""
    layer = node.operation
    tensors = list({id(t): t for t in node.arguments.keras_tensors}.values())
    keys = [id(t) for t in tensors]

    def call_step(l, values):
        args, kwargs = node.arguments.fill_in(dict(zip(keys, values)))
        return l(*args, **kwargs)

    def probe(seed):
        return [probe_input(tuple(t.shape[2:]), str(t.dtype), t.shape[1] or PROBE_STEPS, None, seed) for t in tensors]

    where = f"layer {index} {layer.name!r} ({type(layer).__name__})"
    found = cached_attention(layer, where, clock, call_step, probe)
    if isinstance(found, str):
        raise _error(index, layer, found)
    specs, step = found

    def call(values, states, mask):
        output, new = step(values, states)
        return [output], new

    return _GraphNode(layer, tuple(keys), tuple(id(t) for t in node.outputs), (PER_STEP,),
                      _renamed(specs, layer, node_index), call)


def _memory_attention(index: int, node, kinds: dict[int, str], split) -> _GraphNode:
    """An attention layer whose query is per step and whose `value`/`key` are the encoder's outputs: the
    memory (and its Keras mask, a padded source's) is a state that `initial_state` sets and every step
    passes on unchanged; each step calls the layer on a query of one step, the memory's mask set on it
    as Keras sets it between layers."""
    layer = node.operation
    tensors = node.arguments.keras_tensors
    memory = [t for t in tensors if id(t) in split.memory]
    queries = [t for t in tensors if id(t) not in split.memory]
    if any(kinds[id(t)] != PER_STEP for t in queries):
        raise _error(index, layer, "its query is not per step (a last step or a static tensor)")
    masks = [split.memory_masks.get(id(t)) for t in memory]
    names = ["memory"] if len(memory) == 1 else [f"memory{j}" for j in range(len(memory))]
    states = [StateSpec(name=f"{layer.name}_{name}", layer=layer.name, index=j,
                        shape=tuple(int(d) for d in t.shape[1:]), dtype=str(t.dtype))
              for j, (name, t) in enumerate(zip(names, memory))]
    masked = [(j, m) for j, m in enumerate(masks) if m is not None]
    states += [StateSpec(name=f"{layer.name}_{names[j]}_mask", layer=layer.name, index=len(states) + k,
                         shape=tuple(int(d) for d in m.shape[1:]), dtype="float32")  # 1.0 where not padded
               for k, (j, m) in enumerate(masked)]
    mask_state = {j: len(memory) + k for k, (j, _) in enumerate(masked)}

    def call(values, carried, mask):
        feed = {id(t): v[:, None] for t, v in zip(queries, values)}
        for j, t in enumerate(memory):
            value = tf.identity(carried[j])
            if j in mask_state:
                set_keras_mask(value, tf.cast(carried[mask_state[j]], tf.bool))
            feed[id(t)] = value
        args, kwargs = node.arguments.fill_in(feed)
        return [layer(*args, **kwargs)[:, 0]], tuple(carried)

    initial = tuple(id(t) for t in memory) + tuple(id(m) for _, m in masked)
    return _GraphNode(layer, tuple(id(t) for t in queries), tuple(id(t) for t in node.outputs), (PER_STEP,),
                      tuple(states), call, initial=initial)


def _reference_steps(model: keras.Model, x_tensor, layers) -> int | None:
    """The one sequence length the source model takes: a fixed-length sequence Input, or the `n` of a
    `RepeatVector` (the graph's merge needs the sequence that long). None: any length.

    Raises:
        UnsupportedModel: the lengths disagree, or the model takes one step only (the chunked
            checks need at least two).
    """
    lengths = {int(l.n) for l in layers if isinstance(l, keras.layers.RepeatVector)}
    if x_tensor.shape[1] is not None:
        lengths.add(int(x_tensor.shape[1]))
    if not lengths:
        return None
    if len(lengths) > 1:
        raise cannot_stream(model, f"fixes its sequence length to several values ({sorted(lengths)}: the sequence "
                            "Input and `RepeatVector` layers disagree).")
    (steps,) = lengths
    if steps < 2:
        raise cannot_stream(model, f"takes sequences of {steps} step only; the verification streams the golden "
                            "probe in two chunks, so it needs at least 2 steps.")
    return steps


def _static_node(index: int, node, in_kinds: set[str]) -> _GraphNode:
    """A node reading static tensors: on them alone it computes a static tensor (once per step, the
    same each time); `RepeatVector` turns one into a per-step tensor, the same at every step."""
    layer = node.operation
    inputs = tuple(id(t) for t in node.arguments.keras_tensors)
    outputs = tuple(id(t) for t in node.outputs)
    if in_kinds != {STATIC}:
        raise _error(index, layer, "it merges a static input's tensor (no time axis) with a per-step or "
                     "last-step one; a static input may feed `RepeatVector` (then merge per step), or an RNN's "
                     "`initial_state=`, or layers that read static tensors only")
    if isinstance(layer, keras.layers.RNN):
        raise _error(index, layer, "it reads a static tensor, so there is no sequence to step through")
    if isinstance(layer, keras.layers.RepeatVector):
        return _GraphNode(layer, inputs, outputs, (PER_STEP,), (), lambda values, states, mask: ([values[0]], ()))
    if len(inputs) > 1 or not isinstance(layer, keras.layers.Layer):
        return _GraphNode(layer, inputs, outputs, (STATIC,), (), _op_call(node, per_step=False))
    if len(node.outputs) != 1:
        raise _error(index, layer, "it reads a static tensor and has several outputs")

    def call(values, states, mask):
        return [layer(values[0], training=False)], ()

    return _GraphNode(layer, inputs, outputs, (STATIC,), (), call)


def _op_call(node, *, per_step: bool) -> Callable:
    """Calls the node's operation as the model does (its recorded args and kwargs), on one step."""
    keys = [id(t) for t in node.arguments.keras_tensors]
    operation = node.operation

    def call(values, states, mask):
        feed = {k: (v[:, None] if per_step else v) for k, v in zip(keys, values)}
        args, kwargs = node.arguments.fill_in(feed)
        output = operation(*args, **kwargs)
        return [output[:, 0] if per_step else output], ()

    return call


def _why_not_per_step_node(node) -> str | None:
    """The probe for a node of several inputs (or a Keras op): on random sequences, its output keeps
    the time axis and each step run alone gives the whole-sequence numbers."""
    rng = np.random.default_rng(5)
    tensors = node.arguments.keras_tensors
    if any(d is None for t in tensors for d in t.shape[2:]):
        return "its inputs' feature shapes are not static, so it cannot be probed"
    whole_in = {id(t): (rng.integers(1, 10, size=(2, PROBE_STEPS, *t.shape[2:])) if "int" in str(t.dtype)
                        else rng.normal(size=(2, PROBE_STEPS, *t.shape[2:]))).astype(str(t.dtype)) for t in tensors}
    keys = list(whole_in)

    def call(inputs):
        args, kwargs = node.arguments.fill_in({k: tf.constant(v) for k, v in zip(keys, inputs)})
        return np.asarray(node.operation(*args, **kwargs))

    try:
        whole = call([whole_in[k] for k in keys])
    except Exception as exc:  # noqa: BLE001
        first_line = (str(exc).splitlines() or [""])[0][:200]
        return f"it fails on {PROBE_STEPS}-step probe sequences ({type(exc).__name__}: {first_line})"
    if whole.ndim < 2 or whole.shape[:2] != (2, PROBE_STEPS):
        return f"it does not keep the time axis (probes of [2, {PROBE_STEPS}, ...] came out {list(whole.shape)})"
    return one_step_mismatch(call, [whole_in[k] for k in keys], whole)


def output_names(model: keras.Model) -> list[str]:
    """The serving key of each of several outputs, in `model.outputs` order: a dict's own keys; for
    a list, each output's layer name, and where several outputs come from one layer (an RNN's
    output and its returned states) `<layer>_final_<state>` or `<layer>_output<i>`."""
    if isinstance(model._outputs_struct, dict):
        if len(model._outputs_struct) != len(model.outputs):
            raise UnsupportedModel(f"Model {model.name!r} returns a nested structure of outputs; return a flat "
                                   "list or dict of tensors.")
        return [str(k) for k in sorted(model._outputs_struct)]  # Keras flattens a dict by sorted key
    histories = [t._keras_history for t in model.outputs]
    layers = [h.operation.name for h in histories]
    names = []
    for history, layer in zip(histories, layers):
        if layers.count(layer) == 1:
            names.append(layer)
            continue
        operation, index = history.operation, int(history.tensor_index)
        if isinstance(operation, keras.layers.RNN) and index >= 1:
            labels = STATE_NAMES.get(type(operation.cell).__name__)
            names.append(f"{layer}_final_{labels[index - 1] if labels else f'state{index - 1}'}")
        else:
            names.append(f"{layer}_output{index}")
    return names


def _output_specs(model: keras.Model, outputs, kinds: dict, states) -> tuple[OutputSpec, ...]:
    """One `OutputSpec` per model output (`outputs`: one probe step's values), named as Keras names them."""
    names = output_names(model)
    taken = {"inputs", "lengths", "x", "batch_size"} | {s.name for s in states}
    clashes = sorted({n for n in names if names.count(n) > 1 or n in taken})
    if clashes:
        raise UnsupportedModel(
            f"Model {model.name!r} has several outputs and their names {clashes} are repeated or clash with a "
            f"state or input key (states: {[s.name for s in states]}). Return a dict of outputs with other keys "
            "(`keras.Model(x, {'name': tensor, ...})`), or rename those layers.")
    specs = []
    for name, tensor, value in zip(names, model.outputs, outputs):
        try:
            specs.append(OutputSpec(name=name, shape=tuple(int(d) for d in value.shape[1:]), dtype=value.dtype.name,
                                    last_step=kinds[id(tensor)] == LAST_STEP))
        except ValueError as exc:
            raise UnsupportedModel(f"Model {model.name!r}: output {name!r} cannot be a serving key ({exc}). "
                                   "Return a dict of outputs with other keys.") from None
    return tuple(specs)


def named_reference(reference: Callable, outputs: tuple[OutputSpec, ...]) -> Callable:
    """The Keras call's list or dict of outputs as a dict by output name (what goldens record)."""

    def call(inputs, lengths=None, *extras):  # `extras`: static and other sequence inputs, when the model has them
        result = reference(inputs, lengths, *extras)
        if isinstance(result, dict):
            return {o.name: result[o.name] for o in outputs}
        return {o.name: value for o, value in zip(outputs, result)}

    return call


def graph_step_model(model: keras.Model, description: str, *, max_length: int | None = None) -> StepModel:
    """The step model of a functional model with one sequence input and one or several outputs
    (a list or dict: its step then returns one per-step tensor each), any graph between.

    Raises:
        UnsupportedModel: naming the node that cannot run step by step.
    """
    ordered = [n for depth in sorted(model._nodes_by_depth, reverse=True) for n in model._nodes_by_depth[depth]]
    x_tensor, static_tensors, sequence_tensors, split = _split_with_context(model, ordered)
    skipped = split.encoder_nodes if split is not None else frozenset()  # run once, by `initial_state`
    context_tensors = split.contexts if split is not None else ()
    layers = _layers_of(n for n in ordered
                        if id(n) not in skipped and not isinstance(n.operation, keras.layers.InputLayer))
    kinds = {id(x_tensor): PER_STEP, **{id(t): STATIC for t in static_tensors},
             **{id(t): PER_STEP for t in sequence_tensors},
             **({id(t): STATIC for t in split.boundary} if split is not None else {})}
    nodes: list[_GraphNode] = []
    masked = mask_source(layers)[0]  # a layer marks padding in the inputs: the export takes `lengths` too
    given = frozenset(id(t) for t in mask_inputs(model))  # masks given as inputs (`mask=mask_input`)
    uses_masks = masked or bool(given)
    rules: list[Callable | None] = []  # each node's mask rule (models with masks only)
    pads: dict[float, object] = {}  # pad value -> the first layer that starts a mask with it
    mask_ops = mask_only_nodes(model, ordered) if uses_masks else set()
    clock = Clock(max_length or fixed_steps(model, _timed(x_tensor, sequence_tensors)))
    for index, node in enumerate(n for n in ordered if not isinstance(n.operation, keras.layers.InputLayer)):
        if id(node) in mask_ops or id(node) in skipped:
            continue
        try:
            attends = split is not None and id(node) in split.attention_nodes
            if uses_masks:
                if attends:
                    raise _error(index, node.operation, "it attends over the encoder's outputs from a masked decoder "
                                 "sequence; a mask on the decoder side is not supported with attention yet")
                rules.append(mask_rule(index, node, id(x_tensor), pads, given))
            graph_node = (_memory_attention(index, node, kinds, split) if attends
                          else _node(index, node, kinds, clock))
        except SeqExportError:
            raise
        except Exception as exc:  # noqa: BLE001  any layer can fail any way: name it, no traceback
            raise _error(index, node.operation, f"building its step raised {type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from None
        kinds.update(zip(graph_node.outputs, graph_node.kinds))
        nodes.append(graph_node)
    output_ids = [id(t) for t in model.outputs]
    for tensor, name in zip(model.outputs, output_names(model) if len(output_ids) > 1 else ["outputs"]):
        if kinds[id(tensor)] == STATIC:
            raise cannot_stream(model, f"computes its output {name!r} from static inputs alone (no time axis); "
                                "every output must come from the sequence.")
    several = len(output_ids) > 1
    states = with_position(model, clock, tuple(s for n in nodes for s in n.states), uses_masks)
    if not states:
        raise cannot_stream(model, "has no recurrent layer and no causal convolution; seqexport streams models "
                            "that carry a state from step to step.")

    static_ids = [id(t) for t in static_tensors]
    rules = rules or [None] * len(nodes)
    extra_ids = static_ids + [id(t) for t in sequence_tensors]  # the step's `statics`: statics, then slices

    def masked_step(x, prev_states, mask=None, statics=()):
        values, new_states, offset = {id(x_tensor): x, **dict(zip(extra_ids, statics))}, [], 0
        masks: dict[int, object] = {}  # each per-step tensor's Keras mask at this step, [B] bool (absent: none)
        for node, rule in zip(nodes, rules):
            count = len(node.states)
            inputs = [values.get(i) if i in node.initial else values[i] for i in node.inputs]  # an initial
            # state from the context is set once, by `initial_state`: the step does not see it
            node_mask = None
            if rule is not None:
                node_mask, out_masks = rule(inputs, [masks.get(i) for i in node.inputs], mask, values)
                masks.update((i, m) for i, m in zip(node.outputs, out_masks) if m is not None)
            outputs, new = node.call(inputs, tuple(prev_states[offset: offset + count]), node_mask)
            values.update(zip(node.outputs, outputs))
            new_states.extend(new)
            offset += count
        if several:
            return tuple(values[i] for i in output_ids), tuple(new_states)
        return values[output_ids[0]], tuple(new_states)

    if clock.used:
        masked_step = clocked(clock, masked_step)

    def step(x, prev_states, statics=()):
        return masked_step(x, prev_states, None, statics)

    static_specs = _static_specs(model, static_tensors)
    sequence_specs = _sequence_specs(model, sequence_tensors, given)
    context_specs = _context_specs(model, context_tensors, given)
    zero_statics = tuple(tf.zeros((1, *i.shape), i.dtype) for i in (*static_specs, *sequence_specs))

    input_shape = tuple(x_tensor.shape[2:])
    input_dtype = tf.as_dtype(x_tensor.dtype).name
    y, _ = probe_step(model, lambda x, s: step(x, s, zero_statics), tf.zeros((1, *input_shape), input_dtype),
                      tuple(tf.zeros((1, *s.shape), s.dtype) for s in states))
    outputs = _output_specs(model, y, kinds, states) if several else ()
    first = y[0] if several else y
    reference = keras_reference(model, layers)
    if static_specs or sequence_specs or context_specs:
        reference = reference_with_extras(model, reference, x_tensor,
                                          [*static_tensors, *context_tensors, *sequence_tensors])

    return StepModel(
        step_fn=step,
        masked_step_fn=masked_step if masked else None,
        mask_pad_value=next(iter(pads), 0.0),
        bind_step=step_binder(model, masked_step),
        input_shape=input_shape,
        input_dtype=input_dtype,
        output_shape=tuple(int(d) for d in first.shape[1:]),
        output_dtype=first.dtype.name,
        outputs=outputs,
        states=states,
        variables=tuple(v.value for v in model.variables),
        trainable_variables=tuple(v.value for v in model.trainable_variables),
        trainable_names=tuple(v.path for v in model.trainable_variables),
        last_step_only=not several and kinds[output_ids[0]] == LAST_STEP,
        reference_fn=named_reference(reference, outputs) if several else reference,
        reference_batch=stateful_batch(layers),
        reference_steps=_reference_steps(model, _timed(x_tensor, sequence_tensors), layers),
        fixed_steps=fixed_steps(model, _timed(x_tensor, sequence_tensors)),
        input_vocab=(vocab_of(model, x_tensor) if sequence_tensors
                     else next((l.input_dim for l in layers if isinstance(l, keras.layers.Embedding)), None)),
        description=description or f"Keras model {model.name!r}",
        static_inputs=static_specs,
        sequence_inputs=sequence_specs,
        context_inputs=context_specs,
        initial_states_fn=(_initial_states_fn(nodes, static_ids, split, clock.used) if any(n.initial for n in nodes)
                           else None),
        max_length=clock.cache_length,
        findings=tuple(clock.findings),
    )


def _split_with_context(model: keras.Model, ordered: list):
    """`_split_inputs`, or where the other time-axis inputs are an encoder's (exporter/context.py) the
    main one, the static ones, no other sequence input, and the `ContextSplit` (else None)."""
    masks = {id(t) for t in mask_inputs(model)}
    sequences = [t for t in model.inputs if id(t) in masks or has_time_axis(model, t)]
    split = find_context(model, sequences, masks, ordered)
    if split is None:
        return (*_split_inputs(model), None)
    return split.main, [t for t in model.inputs if all(t is not s for s in sequences)], [], split


def _split_inputs(model: keras.Model):
    """The main sequence input (the first with a time axis: `[B, T, ...]`, or `[B, T]` token ids), the
    static ones (`[B, ...]`, no time axis: no unknown dimension after the batch) and the other sequence
    inputs (stepped through with the main one, so they must share its time axis), masks given as
    inputs among them (`[B, T]`, passed as a layer's `mask=`)."""
    masks = {id(t) for t in mask_inputs(model)}
    sequences = [t for t in model.inputs if id(t) in masks or has_time_axis(model, t)]
    static = [t for t in model.inputs if all(t is not s for s in sequences)]
    if sequences and id(sequences[0]) in masks:  # the main input is the first that is not a mask
        main = next((t for t in sequences if id(t) not in masks), None)
        sequences = [main, *(t for t in sequences if t is not main)] if main is not None else []
    if not sequences:
        found = ", ".join(f"{t.name} {list(t.shape)}" for t in model.inputs)
        raise UnsupportedModel(
            f"Model {model.name!r} has {len(model.inputs)} input(s) ({found}) and none has a time axis. seqexport "
            "exports a model with sequence inputs [B, T, ...] (the first is the main one) plus any number of "
            "static inputs [B, K] (no time axis, rank 2, fully known K).")
    lengths = {t.name: int(t.shape[1]) for t in sequences if t.shape[1] is not None}
    if len(set(lengths.values())) > 1:
        fixed = ", ".join(f"{name} T={steps}" for name, steps in lengths.items())
        raise cannot_stream(model, f"has sequence inputs of different time lengths ({fixed}); seqexport steps "
                            "through its sequence inputs together, so they must share one time axis. Inputs of "
                            "different lengths are not supported: write a step-model factory for those (see the "
                            "README).")
    return sequences[0], static, sequences[1:]


def _layers_of(nodes) -> list:
    """The layers the nodes call, each once, in order."""
    layers = []
    for node in nodes:
        if all(node.operation is not l for l in layers):
            layers.append(node.operation)
    return layers


def refuse_strings(model: keras.Model) -> None:
    """Raises `CannotStream` for a model that takes strings: raw text has no step, and string tokens
    `[B, T]` none that a probe could prove (probes are numbers)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):  # a Sequential not built yet: its rebuild says so
        return
    text = next((t for t in inputs or () if str(t.dtype) == "string"), None)
    if text is None:
        return
    if has_time_axis(model, text):
        raise cannot_stream(model, f"takes string tokens ({text.name!r} {list(text.shape)}, one per step): the probes "
                            "that prove a step are numbers, so the tokens are served whole-sequence (DT_STRING [B, T]); "
                            "to stream, map them to ids (a `StringLookup`) before the model")
    raise cannot_stream(model, f"takes raw text ({text.name!r} {list(text.shape)}, a string): the sequence is "
                        "made from the whole text (a `TextVectorization`), so there is no step to stream.")


def has_time_axis(model: keras.Model, tensor) -> bool:
    """`[B, T, ...]`; or `[B, T]` token ids: T unknown, or fixed (`pad_sequences(maxlen=T)`) and the
    ids read by a layer that gives each of them a step (an `Embedding`, or one of your own that
    embeds tokens and positions: `[B, T]` in, `[B, T, ...]` out)."""
    if len(tensor.shape) != 2:
        return len(tensor.shape) >= 3
    if tensor.shape[1] is None or vocab_of(model, tensor) is not None:
        return True
    return "int" in str(tensor.dtype) and any(
        len(out.shape) >= 3 and out.shape[1] == tensor.shape[1]
        for depth in model._nodes_by_depth.values() for node in depth
        if any(t is tensor for t in node.arguments.keras_tensors) for out in node.outputs)


def _timed(x_tensor, sequence_tensors):
    """The sequence input that fixes the time length, if one does (they agree: `_split_inputs`)."""
    return next((t for t in (x_tensor, *sequence_tensors) if t.shape[1] is not None), x_tensor)


def vocab_of(model: keras.Model, tensor) -> int | None:
    """The `input_dim` of the `Embedding` that reads `tensor` (token ids), or None."""
    for depth in model._nodes_by_depth.values():
        for node in depth:
            if isinstance(node.operation, keras.layers.Embedding) and any(
                    t is tensor for t in node.arguments.keras_tensors):
                return int(node.operation.input_dim)
    return None


def _sequence_specs(model: keras.Model, sequence_tensors, masks: frozenset = frozenset()) -> tuple[InputSpec, ...]:
    """The other sequence inputs, each by its Keras name with its per-step shape (`masks`: ids of those
    given as a layer's `mask=`)."""
    specs = []
    for tensor in sequence_tensors:
        dtype = tf.as_dtype(tensor.dtype).name
        is_mask = id(tensor) in masks
        try:
            specs.append(InputSpec(name=tensor.name, shape=tuple(int(d) for d in tensor.shape[2:]), dtype=dtype,
                                   vocab=vocab_of(model, tensor) if dtype.startswith("int") and not is_mask else None,
                                   mask=is_mask))
        except (TypeError, ValueError) as exc:
            raise UnsupportedModel(f"Model {model.name!r}: sequence input {tensor.name!r} cannot be a serving key, "
                                   f"or its per-step shape {list(tensor.shape[2:])} is not fully known ({exc}). "
                                   "Name the keras.Input (`name=`) with letters, digits and `_`, and give every "
                                   "feature size.") from None
    return tuple(specs)


def _context_specs(model: keras.Model, context_tensors, masks: frozenset) -> tuple[InputSpec, ...]:
    """The context inputs, each by its Keras name: its per-step shape and its own time length (`steps`:
    the fixed one, or -1 for any)."""
    specs = _sequence_specs(model, context_tensors, masks)
    return tuple(dataclasses.replace(spec, steps=int(t.shape[1]) if t.shape[1] is not None else -1)
                 for spec, t in zip(specs, context_tensors))


def _static_specs(model: keras.Model, static_tensors) -> tuple[InputSpec, ...]:
    specs = []
    for tensor in static_tensors:
        try:
            specs.append(InputSpec(name=tensor.name, shape=tuple(int(d) for d in tensor.shape[1:]),
                                   dtype=tf.as_dtype(tensor.dtype).name))
        except ValueError as exc:
            raise UnsupportedModel(f"Model {model.name!r}: static input {tensor.name!r} cannot be a serving key "
                                   f"({exc}). Name the keras.Input (`name=`) with letters, digits and `_`.") from None
    return tuple(specs)


def reference_with_extras(model: keras.Model, reference: Callable, x_tensor, static_tensors) -> Callable:
    """The Keras call with the sequence and the static inputs put back in the model's own input structure."""

    def call(inputs, lengths=None, statics=()):
        by_id = {id(x_tensor): inputs, **{id(t): v for t, v in zip(static_tensors, statics)}}
        flat = [by_id[id(t)] for t in model.inputs]
        return reference(keras.tree.pack_sequence_as(model._inputs_struct, flat), lengths)

    return call


def _initial_states_fn(nodes: list[_GraphNode], static_ids: list[int], split, position: bool) -> Callable:
    """The states before the first step: what each RNN's `initial_state=` computes from the static
    inputs (`statics`, then the context inputs), zeros for the others (the static nodes and the
    encoder run once here, outside the loop)."""
    input_ids = [*static_ids, *(id(t) for t in (split.contexts if split is not None else ()))]

    def initial(statics):
        values = dict(zip(input_ids, statics))
        batch = tf.shape(statics[0])[0]
        if split is not None:
            with variables_read_once(split.encoder):  # a loop that reads a variable has no second derivative
                encoded = split.encoder([values[id(t)] for t in split.encoder_inputs], training=False)
            values.update(zip((id(t) for t in split.boundary), keras.tree.flatten(encoded)))
        states = []
        for node in nodes:
            if all(i in values for i in node.inputs) and not node.states:
                values.update(zip(node.outputs, node.call([values[i] for i in node.inputs], (), None)[0]))
            if node.initial:
                states.extend(tf.cast(values[i], s.dtype) for i, s in zip(node.initial, node.states))
            else:
                states.extend(tf.zeros(tf.stack([batch, *s.shape]), s.dtype) for s in node.states)
        if position:
            states.append(tf.zeros(tf.reshape(batch, [1]), tf.float32))
        return tuple(states)

    return initial
