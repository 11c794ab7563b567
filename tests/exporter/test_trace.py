"""The traced signatures at the edges: no steps, no rows."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from exporter.keras_model import step_model_from_keras
from exporter.pipeline import write_export
from tests.exporter import models


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("edges") / "1"
    write_export(step_model_from_keras(models.build("masking")), export_dir, name="m", source={"kind": "test"})
    return tf.saved_model.load(str(export_dir))


def test_zero_steps_return_the_state_unchanged(loaded):
    states = {k: v + 1.0 for k, v in loaded.signatures["initial_state"](batch_size=tf.constant(2)).items()}
    result = loaded.signatures["stream"](inputs=tf.zeros([2, 0, 3]), lengths=tf.zeros([2], tf.int32), **states)
    assert result["outputs"].shape == (2, 0, 2)
    for key, value in states.items():
        np.testing.assert_array_equal(result[key], value)


def test_zero_rows(loaded):
    result = loaded.signatures["serving_default"](inputs=tf.zeros([0, 5, 3]), lengths=tf.zeros([0], tf.int32))
    assert result["outputs"].shape == (0, 5, 2)
    states = [v for k, v in result.items() if k != "outputs"]
    assert len(states) == 2 and all(v.shape == (0, 4) for v in states)
