"""exporter.convert.parity: the checks pass on a faithful model and fail, with numbers, on a broken one."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.convert.parity import driver_checks, model_checks
from exporter.convert.runtimes import LiteRTModel, StepLoopBackend


@pytest.fixture(scope="module")
def lstm(kind_loaded):
    from exporter.convert import tflite

    loaded = kind_loaded["lstm"]
    return loaded, LiteRTModel(tflite.convert_signature(loaded, "step"))


class _Shifted:
    """A model whose `y` is off by `delta`: what a wrong weight or kernel would look like."""

    def __init__(self, model, delta: float):
        self.model, self.delta = model, delta
        self.runtime, self.inputs, self.outputs = model.runtime, model.inputs, model.outputs
        self.state_names, self.static_batch, self.zero_states = model.state_names, model.static_batch, model.zero_states

    def __call__(self, feed):
        out = self.model(feed)
        return {**out, "y": out["y"] + self.delta}


class _Forgetful(StepLoopBackend):
    """Drops the carried state between chunks: a streaming client with a state bug."""

    def stream(self, inputs, states, lengths=None):
        return super().stream(inputs, self.initial_state(np.shape(inputs)[0]), lengths)


class _IgnoresLengths(StepLoopBackend):
    def stream(self, inputs, states, lengths=None):
        return super().stream(inputs, states, None)


def test_model_checks_report_the_error_they_measure(lstm):
    loaded, model = lstm
    tolerance = loaded.manifest.options.tolerance
    good = model_checks("tflite", "step", model, loaded.golden, tolerance)
    assert good and all(r.passed for r in good)
    rows = {r.tensor: r for r in model_checks("tflite", "step", _Shifted(model, 1e-3), loaded.golden, tolerance)}
    print({k: (r.passed, r.max_abs, r.atol, r.rtol) for k, r in rows.items()})
    assert not rows["y"].passed and rows["y"].max_abs == pytest.approx(1e-3, rel=1e-2)
    assert "worst element" in rows["y"].message
    assert all(r.passed for k, r in rows.items() if k != "y")  # the states are untouched


def test_driver_checks_catch_a_state_not_carried_across_chunks(lstm):
    loaded, model = lstm
    tolerance = loaded.manifest.options.tolerance
    rows = driver_checks("tflite", "step driver", _Forgetful(model), loaded.manifest, loaded.golden, tolerance)
    by_chunks = {}
    for row in rows:
        by_chunks.setdefault(row.signature, []).append(row.passed)
    print({k: all(v) for k, v in by_chunks.items()})
    assert all(by_chunks["step driver x1"])  # one chunk: nothing to carry
    assert not all(by_chunks["step driver x2"]) and not all(by_chunks["step driver x6"])


def test_driver_checks_catch_padding_that_is_not_held(kind_loaded):
    from exporter.convert import tflite

    loaded = kind_loaded["masking"]
    model = LiteRTModel(tflite.convert_signature(loaded, "step"))
    tolerance = loaded.manifest.options.tolerance
    # The step masks the steps its inputs mark as padding by itself; past `lengths` the driver
    # alone must hold the state, so the probe's tails are made real values (not the pad value).
    golden = dict(loaded.golden)
    inputs = golden["serving_default/in/inputs"].copy()
    lengths = golden["serving_default/in/lengths"]
    assert (lengths < inputs.shape[1]).any()
    for row, length in enumerate(lengths):
        inputs[row, length:] = np.random.default_rng(row).normal(size=inputs[row, length:].shape)
    golden["serving_default/in/inputs"] = inputs
    good = driver_checks("tflite", "step driver", StepLoopBackend(model), loaded.manifest, golden, tolerance)
    assert good and all(r.passed for r in good)
    bad = driver_checks("tflite", "step driver", _IgnoresLengths(model), loaded.manifest, golden, tolerance)
    failed_states = [r for r in bad if not r.passed and r.tensor != "outputs[t<lengths]"]
    print([(r.signature, r.tensor, r.max_abs) for r in failed_states])
    assert failed_states  # the final states of the short rows moved on past their length


def test_a_runtime_error_is_a_failed_row(lstm):
    loaded, model = lstm

    class _Broken(_Shifted):
        def __call__(self, feed):
            raise RuntimeError("kernel exploded")

    rows = model_checks("tflite", "step", _Broken(model, 0.0), loaded.golden, loaded.manifest.options.tolerance)
    assert len(rows) == 1 and not rows[0].passed and "kernel exploded" in rows[0].message
