"""A Keras model as a `StepModel`: the one entry point, whatever the model's shape.

A functional step model `Model([x_t, *states], [y_t, *new_states])` is taken as it is; a
chain of layers is rebuilt by `exporter.keras_step` (a head after the loop, fused
whole-sequence kernels); any other graph (branches, merges, shared layers) by
`exporter.keras_graph`, which builds its nodes with the chain's stage builders; a subclassed
model by `exporter.subclassed` (its call, streamed on its RNN layers' states, where a probe shows
that is right); a model that cannot run step by step, on request, by `exporter.whole_sequence`
(its own call, whole).
"""

from __future__ import annotations

import keras

from exporter.artifact.errors import CannotStream, UnsupportedModel
from exporter.keras_generate import with_generation
from exporter.keras_graph import graph_step_model, refuse_strings
from exporter.keras_step import NotAChain, chain_step_model, from_step_model, is_graph_model, is_step_model
from exporter.step_model import StepModel
from exporter.subclassed import subclassed_step_model
from exporter.whole_sequence import whole_sequence_model


def step_model_from_keras(model: keras.Model, description: str = "", *, fall_back: bool = False,
                          max_length: int | None = None) -> StepModel:
    """Builds the step model of a Keras model made of RNN and per-step layers.

    Also takes a functional step model `Model([x_t, *states], [y_t, *new_states])`.

    Args:
        fall_back: a model that cannot run step by step (`CannotStream`: a layer mixes time steps,
            nothing to carry, a subclassed `call`) gets a whole-sequence model instead
            (exporter/whole_sequence.py), which says why.
        max_length: positions of a causal attention's key/value cache (exporter/causal.py); None: the
            model's fixed input length, where it has one.

    Raises:
        UnsupportedModel: naming the first layer (or graph node) that cannot run step by step
            (`CannotStream`, unless `fall_back`), or why the model cannot be exported at all.
    """
    if not isinstance(model, keras.Model):
        raise UnsupportedModel(f"Expected a Keras model, got {type(model).__name__}.")
    return with_generation(model, _step_model(model, description, fall_back=fall_back, max_length=max_length))


def _step_model(model: keras.Model, description: str, *, fall_back: bool, max_length: int | None) -> StepModel:
    try:
        if not is_graph_model(model):
            return subclassed_step_model(model, description)
        if is_step_model(model):
            return from_step_model(model, description)
        refuse_strings(model)
        try:
            return chain_step_model(model, description, max_length=max_length)
        except NotAChain:
            return graph_step_model(model, description, max_length=max_length)
    except CannotStream as exc:
        if not fall_back:
            raise
        return whole_sequence_model(model, exc.why, description)
