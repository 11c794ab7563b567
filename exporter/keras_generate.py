"""Whether a Keras model's output is a distribution over the ids it reads (so `generate` can feed
the chosen id back), decided from its layers: the first `Embedding` gives the ids, the output
layer's activation says probabilities (softmax) or logits (anything else).
"""

from __future__ import annotations

import dataclasses

import keras

from exporter.artifact.specs import Feedback, GenerateSpec, Scores
from exporter.step_model import StepModel


def with_generation(model: keras.Model, step_model: StepModel) -> StepModel:
    """`step_model` with `generation` set when the output feeds the next input as an id, else with
    `generation_refusal` saying why not (an id model only; a float model is decided on request)."""
    if not step_model.streams or step_model.generation is not None:
        return step_model
    embedding = _first_embedding(model, step_model.input_vocab)
    if embedding is None:
        if step_model.input_dtype.startswith("float"):
            return step_model
        return dataclasses.replace(step_model, generation_refusal=(
            f"no Embedding reads its {step_model.input_dtype} input, so the ids it takes are unknown"))
    output = _output_layer(model)
    shape = tuple(step_model.outputs[0].shape) if step_model.outputs else tuple(step_model.output_shape)
    dtype = step_model.outputs[0].dtype if step_model.outputs else step_model.output_dtype
    vocab = int(embedding.input_dim)
    where = f"layer {output.name!r}" if output is not None else "the output"
    if len(shape) != 1 or shape[0] != vocab or not dtype.startswith("float"):
        return dataclasses.replace(step_model, generation_refusal=(
            f"the output of {where} has {list(shape)} {dtype} values per step but Embedding {embedding.name!r} reads "
            f"{vocab} ids (input_dim): a distribution over those ids needs one value per id"))
    scores = Scores.PROBABILITIES if _is_softmax(output) else Scores.LOGITS
    spec = GenerateSpec(feedback=Feedback.IDS, scores=scores, vocab=vocab,
                        source=f"{where} ({scores.value}) over the {vocab} ids of Embedding {embedding.name!r}")
    return dataclasses.replace(step_model, generation=spec)


def _first_embedding(model: keras.Model, vocab: int | None):
    """The `Embedding` that reads the main input's ids (the first with `vocab` ids), or None."""
    found = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.Embedding)]
    if vocab is not None:
        found = [layer for layer in found if int(layer.input_dim) == vocab] or found
    return found[0] if found else None


def _output_layer(model: keras.Model):
    """The layer that makes the model's (first) output, or None for a model without a graph."""
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return None
    first = outputs[0] if isinstance(outputs, (list, tuple)) else next(iter(outputs.values()))
    history = getattr(first, "_keras_history", None)
    return history[0] if history else None


def _is_softmax(layer) -> bool:
    """A softmax at the end: a `Softmax` layer, or a layer (Dense, Activation) whose activation is softmax."""
    if layer is None:
        return False
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"
