"""Batch independence costs O(B) backward passes, not one per output element, and still finds mixing."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from exporter.artifact.specs import SignatureName
from exporter.load import load_step_model
from exporter.trace import trace
from exporter.verification.batch import offdiagonal_blocks

BATCH = 3


def _feed(width: int, steps: int = 4) -> dict:
    return {"inputs": np.random.default_rng(0).normal(size=(BATCH, steps, width)).astype(np.float32)}


def _per_row(f):
    return {"outputs": tf.tanh(f["inputs"] * 2.0), "state": tf.reduce_sum(f["inputs"], axis=1)}


def _mixing(f):
    x = f["inputs"]
    return {"outputs": tf.tanh(x) + 1e-2 * tf.reduce_mean(x, axis=0, keepdims=True)}


def test_large_outputs_take_one_backward_pass_per_row():
    blocks = offdiagonal_blocks(_per_row, _feed(width=50))  # 3*4*50 + 3*50 output elements
    assert blocks.method == "random projections"
    assert blocks.backward_passes == BATCH
    assert blocks.independent and blocks.offdiag_max == 0.0 and blocks.diag_max > 0.0
    assert blocks.to_check("serving_default").message.endswith("(3 random projections)")


def test_small_outputs_take_the_exact_jacobian():
    feed = _feed(width=2)
    blocks = offdiagonal_blocks(_per_row, feed)
    assert blocks.method == "exact Jacobian"
    assert blocks.backward_passes == BATCH * 4 * 2 + BATCH * 2  # one per output element
    assert blocks.independent


@pytest.mark.parametrize("width", [2, 50])
def test_mixing_rows_are_found_by_both_methods(width):
    blocks = offdiagonal_blocks(_mixing, _feed(width=width))
    print(width, blocks)
    assert not blocks.independent
    assert blocks.offdiag_max > 1e-4


def test_projection_cost_does_not_grow_with_the_output():
    small = offdiagonal_blocks(_per_row, _feed(width=40), exact_max_elements=0)
    large = offdiagonal_blocks(_per_row, _feed(width=400), exact_max_elements=0)
    assert small.backward_passes == large.backward_passes == BATCH


@pytest.mark.parametrize("name", ["batchnorm_training_cell", "batch_mean_output_cell", "batch_mean_state_cell"])
def test_row_mixing_factories_are_found_by_projections(name):
    """The three row-mixing models of the factory tests, with the exact Jacobian turned off."""
    step_model, _ = load_step_model(f"tests.exporter.factories:{name}")
    traced = trace(step_model)
    for signature, feed in [
        (SignatureName.PREDICT.value, {"inputs": np.random.default_rng(1).normal(
            size=(BATCH, 4, *step_model.input_shape)).astype(np.float32)}),
        (SignatureName.STEP.value, {"x": np.random.default_rng(2).normal(
            size=(BATCH, *step_model.input_shape)).astype(np.float32),
            **{s.name: np.zeros((BATCH, *s.shape), np.float32) for s in step_model.states}}),
    ]:
        spec = next(s for s in traced.specs if s.name == signature)
        names = [t.name for t in spec.inputs]
        function = traced.gradient_functions[signature]
        blocks = offdiagonal_blocks(lambda f, fn=function, n=names: fn(*[f[k] for k in n]), feed,
                                    exact_max_elements=0)
        print(name, signature, blocks)
        assert blocks.backward_passes == BATCH
        assert not blocks.independent, (name, signature)


def test_exact_jacobian_with_inputs_of_two_dtypes():
    """A float64 input beside a float32 state (TF's jacobian stacks by the target's dtype)."""
    feed = {"inputs": np.random.default_rng(3).normal(size=(BATCH, 4, 2)),
            "state": np.random.default_rng(4).normal(size=(BATCH, 2)).astype(np.float32)}

    def call(f):
        return {"outputs": tf.cast(f["inputs"], tf.float32) * 2.0 + f["state"][:, None]}

    blocks = offdiagonal_blocks(call, feed)
    assert blocks.method == "exact Jacobian" and blocks.independent and blocks.diag_max > 0
