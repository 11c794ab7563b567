"""Keras masks through a graph, one step at a time, as Keras's own `compute_mask` makes them.

exporter/keras_graph.py runs each node's rule beside its call: a mask is `[B]` bool at a
step, or None for none. The rules follow Keras 3 (merges, RNNs, ops that drop a mask), so
the verification's pre-padded and holed probes compare the two.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from exporter.keras_step import layer_refusal, mask_source, masked_rnn_refusal, per_step_stage


def mask_inputs(model: keras.Model) -> list:
    """The model inputs passed as a layer's `mask=` (`GRU(...)(frames, mask=mask_input)`, as keras.io's
    video classifier does): `[B, T]`, bool or int, a sequence the step reads one step of."""
    inputs = {id(t): t for t in model.inputs}
    found = {}
    for depth in model._nodes_by_depth.values():
        for node in depth:
            found.update((i, inputs[i]) for i in _mask_arguments(node) if i in inputs)
    return [t for t in model.inputs if id(t) in found]


def mask_rule(index: int, node, sequence_id: int, pads: dict, given: frozenset = frozenset()) -> Callable:
    """`(inputs, their masks, lengths mask, values) -> (the mask the node's call takes, a mask per output)`:
    Keras's own rule for the node, on one step (a mask is `[B]` bool, or None for none). `values`:
    every tensor's value at this step by id, where a mask given as an input (`given`, ids of
    `mask_inputs`) is read.

    `Masking` and `Embedding(mask_zero=True)` start a mask from the inputs (and `lengths`); an RNN
    takes its sequence's mask and passes it on when it returns sequences (its returned states
    have none); a Keras op (`a + b`) and a layer that does not support masking drop it, as
    Keras does; any other layer runs its own `compute_mask` on the step given a time axis of 1
    (a merge: `Add`, `Average`, ... OR the masks and have none if an input has none;
    `Concatenate` counts an input without one as unmasked). `pads` gathers each pad value a
    mask starts from, with its layer.

    Raises:
        UnsupportedModel: a mask starts from a tensor other than the main sequence input, or from
            another pad value than an earlier one (the probes, and clients, pad with one value).
    """
    layer = node.operation
    count = len(node.outputs)
    explicit = [i for i in _mask_arguments(node) if i in given]
    if explicit:
        return _given_mask_rule(index, node, explicit)
    starts, pad = mask_source([layer]) if isinstance(layer, keras.layers.Layer) else (False, 0.0)
    if starts:
        if [id(t) for t in data_tensors(node)] != [sequence_id]:
            raise layer_refusal(index, layer, "it starts a Keras mask from a tensor other than the main sequence input "
                                "(the model's first input with a time axis); the padding a client marks, and "
                                "`lengths`, are in that input, so the layer that masks must read it directly")
        if pads and pad not in pads:
            first = next(iter(pads.items()))
            raise layer_refusal(index, layer, f"it marks padding with {pad}, while {first[1].name!r} marks it with "
                         f"{first[0]}; padding is marked with one value (`lengths` and the probes pad with it)")
        pads.setdefault(pad, layer)
        computed = per_step_stage(index, layer).mask_fn

        def source(inputs, masks, lengths, values):
            mask = computed(inputs[0])
            mask = mask if lengths is None else tf.logical_and(mask, lengths)
            return mask, [mask]  # `Masking` zeroes the steps it masks

        return source
    if isinstance(layer, keras.layers.RNN):
        def rnn(inputs, masks, lengths, values):
            # Keras passes no mask to an RNN called with `initial_state=` (two tensor arguments),
            # which then steps through the padding; its sequence output keeps the sequence's mask.
            mask = masks[0] if len(inputs) == 1 else None
            if mask is not None and (refusal := masked_rnn_refusal(index, layer)) is not None:
                raise refusal
            return mask, [masks[0] if layer.return_sequences else None] + [None] * (count - 1)

        return rnn
    if not isinstance(layer, keras.layers.Layer) or not layer.supports_masking:
        return lambda inputs, masks, lengths, values: (None, [None] * count)
    if getattr(layer.compute_mask, "_is_default", False) and len(data_tensors(node)) == 1:
        return lambda inputs, masks, lengths, values: (None, [masks[0]] * count)  # the input's mask, passed on
    return _compute_mask_rule(index, node)


def _mask_arguments(node) -> set[int]:
    return {id(t) for t in keras.tree.flatten(node.arguments.kwargs.get("mask")) if isinstance(t, keras.KerasTensor)}


def data_tensors(node) -> list:
    """The tensors a node computes on: Keras also records the mask it passes a layer (`mask=`, made
    by the ops of `compute_mask` before it), which `mask_rule` computes here instead."""
    masks = _mask_arguments(node)
    return [t for t in node.arguments.keras_tensors if id(t) not in masks]


def mask_only_nodes(model: keras.Model, ordered) -> set[int]:
    """The Keras ops that only compute the masks Keras passes as `mask=` (`not_equal`, `any`,
    `logical_or`, ... recorded from `compute_mask`): the step computes those masks itself."""
    uses: dict[int, list[tuple[int, bool]]] = {}  # tensor id -> (reading node id, read as a mask), ...
    for node in ordered:
        masks = _mask_arguments(node)
        for tensor in node.arguments.keras_tensors:
            uses.setdefault(id(tensor), []).append((id(node), id(tensor) in masks))
    outputs = {id(t) for t in model.outputs}
    skipped: set[int] = set()
    for node in reversed(ordered):
        if isinstance(node.operation, keras.layers.Layer) or any(id(t) in outputs for t in node.outputs):
            continue
        reads = [use for t in node.outputs for use in uses.get(id(t), [])]
        if reads and all(as_mask or reader in skipped for reader, as_mask in reads):
            skipped.add(id(node))
    return skipped


def _compute_mask_rule(index: int, node) -> Callable:
    """The layer's own `compute_mask` on one step given a time axis of 1 (what it computes on the
    sequence, one step at a time: the verification compares the two)."""
    layer = node.operation
    keys = [id(t) for t in data_tensors(node)]
    count = len(node.outputs)

    def rule(inputs, masks, lengths, values):
        if all(m is None for m in masks):
            return None, [None] * count
        args, _ = node.arguments.fill_in({k: v[:, None] for k, v in zip(keys, inputs)})
        previous, _ = node.arguments.fill_in({k: None if m is None else m[:, None] for k, m in zip(keys, masks)})
        result = layer.compute_mask(args[0], previous[0])
        result = list(result) if isinstance(result, (list, tuple)) else [result] * count
        out = []
        for mask in result:
            if mask is not None and len(mask.shape) != 2:
                raise layer_refusal(index, layer, f"its Keras mask has shape {list(mask.shape)} on a [batch, 1, ...] "
                             "step; seqexport carries masks of [batch, time]")
            out.append(None if mask is None else tf.cast(mask[:, 0], tf.bool))
        return None, out

    return rule


def _given_mask_rule(index: int, node, explicit: list[int]) -> Callable:
    """A node called with a mask input as `mask=`: that input's step is its mask, and what it passes on
    is what its own `compute_mask` makes of it (an RNN: the mask when it returns sequences)."""
    layer = node.operation
    count = len(node.outputs)
    if len(explicit) > 1:
        raise layer_refusal(index, layer, "it is given several mask inputs as `mask=`; give it one")
    if isinstance(layer, keras.layers.RNN) and (refusal := masked_rnn_refusal(index, layer)) is not None:
        raise refusal
    (given,) = explicit
    keys = [id(t) for t in data_tensors(node)]

    def rule(inputs, masks, lengths, values):
        mask = tf.cast(values[given], tf.bool)
        if lengths is not None:
            mask = tf.logical_and(mask, lengths)
        if isinstance(layer, keras.layers.RNN):
            return mask, [mask if layer.return_sequences else None] + [None] * (count - 1)
        args, _ = node.arguments.fill_in({k: v[:, None] for k, v in zip(keys, inputs)})
        result = layer.compute_mask(args[0], mask[:, None]) if layer.supports_masking else None
        result = list(result) if isinstance(result, (list, tuple)) else [result] * count
        return mask, [None if m is None else tf.cast(tf.reshape(m, [-1]), tf.bool) for m in result]

    return rule
