"""A Keras model as a `StepModel`: the one entry point, whatever the model's shape.

A functional step model `Model([x_t, *states], [y_t, *new_states])` is taken as it is; a
chain of layers is rebuilt by `exporter.keras_step` (a head after the loop, fused
whole-sequence kernels); any other graph (branches, merges, shared layers) by
`exporter.keras_graph`, which builds its nodes with the chain's stage builders.
"""

from __future__ import annotations

import keras

from exporter.artifact.errors import UnsupportedModel
from exporter.keras_graph import graph_step_model
from exporter.keras_step import NotAChain, chain_step_model, check_graph_model, from_step_model, is_step_model
from exporter.step_model import StepModel


def step_model_from_keras(model: keras.Model, description: str = "") -> StepModel:
    """Builds the step model of a Keras model made of RNN and per-step layers.

    Also takes a functional step model `Model([x_t, *states], [y_t, *new_states])`.

    Raises:
        UnsupportedModel: naming the first layer (or graph node) that cannot run step by step.
    """
    if not isinstance(model, keras.Model):
        raise UnsupportedModel(f"Expected a Keras model, got {type(model).__name__}.")
    check_graph_model(model)
    if is_step_model(model):
        return from_step_model(model, description)
    try:
        return chain_step_model(model, description)
    except NotAChain:
        return graph_step_model(model, description)
