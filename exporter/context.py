"""Context inputs: an encoder's inputs, which reach the streamed sequence only through RNN initial states.

keras.io's `lstm_seq2seq` trains `Model([encoder_inputs, decoder_inputs], decoder_outputs)`: the
encoder reads its own sequence whole and its final `h, c` start the decoder LSTM. The decoder is
what streams; the encoder is run once per sequence, by `initial_state`. This module finds that
split in any functional graph, by which inputs each tensor depends on, and builds the encoder as a
Keras sub-model of the trained layers (so its masks, `Bidirectional` and all, are Keras's own).

A time-axis input is a context when every path from it to the outputs enters the streamed part
as an RNN's `initial_state=`, or as the memory an attention layer reads (`value`, `key`: the
encoder's outputs, of a fixed length, with their Keras mask) from a per-step query, and nowhere
else; the main sequence is then the first other one. Anything else (the context mixed into every
step, pooled with decoder steps) is no context: the model falls back as before
(exporter/whole_sequence.py).
"""

from __future__ import annotations

import dataclasses

import keras

from exporter.graph_masks import data_tensors


@dataclasses.dataclass(frozen=True)
class ContextSplit:
    """Where a model's encoder ends.

    Attributes:
        main: the streamed sequence input.
        contexts: the context inputs (each with a time axis of its own), in model input order.
        encoder: a Keras model of the trained layers from `encoder_inputs` to `boundary`.
        encoder_inputs: the contexts and any static inputs the encoder reads, in model input order.
        boundary: the encoder's results that set RNN initial states, in the order it returns them.
        encoder_nodes: ids of the Keras nodes the encoder runs (the step skips them).
        memory: the ids of the `boundary` tensors an attention layer reads (`[B, S, ...]`, S fixed).
        memory_masks: memory id -> the Keras mask of that memory (`[B, S]` bool, a `boundary` tensor
            too: a padded source's), where it has one.
        attention_nodes: ids of the attention nodes that read a memory.
    """

    main: object
    contexts: tuple
    encoder: keras.Model
    encoder_inputs: tuple
    boundary: tuple
    encoder_nodes: frozenset
    memory: frozenset = frozenset()
    memory_masks: dict = dataclasses.field(default_factory=dict)
    attention_nodes: frozenset = frozenset()


def find_context(model: keras.Model, time_inputs: list, masks: set, ordered_nodes: list) -> ContextSplit | None:
    """The split with the first time-axis input (not one of the `masks` given as inputs) as the main
    sequence whose other time-axis inputs are all contexts; None when no input can be the main one
    that way."""
    if len(time_inputs) < 2:
        return None
    depends = _dependencies(model, ordered_nodes)
    time_ids = {id(t) for t in time_inputs}
    for main in (t for t in time_inputs if id(t) not in masks):
        split = _split_at(model, main, time_ids, depends, ordered_nodes)
        if split is not None:
            return split
    return None


def _dependencies(model: keras.Model, ordered_nodes: list) -> dict[int, frozenset]:
    """Each tensor's id -> the ids of the model inputs it is computed from."""
    depends = {id(t): frozenset({id(t)}) for t in model.inputs}
    for node in ordered_nodes:
        if isinstance(node.operation, keras.layers.InputLayer):
            continue
        read = frozenset().union(*(depends.get(id(t), frozenset()) for t in node.arguments.keras_tensors))
        depends.update((id(t), read) for t in node.outputs)
    return depends


def _split_at(model, main, time_ids: set, depends: dict, ordered_nodes: list) -> ContextSplit | None:
    contexts = time_ids - {id(main)}

    def encoder_side(tensor) -> bool:  # computed from contexts (and maybe static inputs), not from the main one
        deps = depends.get(id(tensor), frozenset())
        return bool(deps & contexts) and not deps & (time_ids - contexts)

    if any(encoder_side(t) for t in model.outputs):
        return None
    boundary, encoder_nodes, memory, masks, attention_nodes = {}, set(), set(), {}, set()
    for node in ordered_nodes:
        if isinstance(node.operation, keras.layers.InputLayer):
            continue
        read = [t for t in node.arguments.keras_tensors if encoder_side(t)]
        if not read:
            continue
        if all(encoder_side(t) for t in node.outputs):
            encoder_nodes.add(id(node))
            continue
        tensors = data_tensors(node)
        if encoder_side(tensors[0]):
            return None  # the sequence an RNN steps through, or an attention's query, is the encoder's
        if _reads_memory(node):
            if any(d is None for t in read for d in t.shape[1:]):
                return None  # a memory of any length cannot be a state
            memory.update(id(t) for t in read)
            masks.update((id(t), t._keras_mask) for t in read if getattr(t, "_keras_mask", None) is not None)
            attention_nodes.add(id(node))
        elif not isinstance(node.operation, keras.layers.RNN) or any(all(t is not i for i in tensors[1:])
                                                                      for t in read):
            return None  # the context meets the main sequence other than as an initial state or a memory
        boundary.update((id(t), t) for t in read)
    boundary.update((id(m), m) for m in masks.values())
    if not boundary:
        return None
    needed = frozenset().union(*(depends.get(i, frozenset()) for i in boundary))
    encoder_inputs = tuple(t for t in model.inputs if id(t) in needed)
    outputs = list(boundary.values())
    encoder = keras.Model(list(encoder_inputs), outputs, name=f"{model.name}_encoder")
    return ContextSplit(main=main, contexts=tuple(t for t in model.inputs if id(t) in contexts),
                        encoder=encoder, encoder_inputs=encoder_inputs, boundary=tuple(outputs),
                        encoder_nodes=frozenset(encoder_nodes), memory=frozenset(memory), memory_masks=masks,
                        attention_nodes=frozenset(attention_nodes))


def _reads_memory(node) -> bool:
    """An attention layer called on a per-step query (no causal mask, no scores returned): each step's
    query attends to the whole memory, so the call on one step is the call on the sequence, step by step."""
    kwargs = node.arguments.kwargs
    return (isinstance(node.operation, (keras.layers.Attention, keras.layers.MultiHeadAttention))
            and not kwargs.get("use_causal_mask") and not kwargs.get("return_attention_scores")
            and len(node.outputs) == 1)
