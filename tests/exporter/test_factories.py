"""Factories and custom cells, higher-order checks, float64 tolerances, batch independence."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from exporter.artifact import golden_io
from exporter.artifact.manifest import read_manifest
from exporter.artifact.paths import golden_path
from exporter.load import load_step_model
from exporter.pipeline import write_export
from exporter.verification.run import verify_many_in_fresh_process
from tests.exporter import factories

pytestmark = pytest.mark.slow

FACTORIES = ["clip_cell", "two_state_cell", "float64_cell", "batchnorm_training_cell",
             "batch_mean_output_cell", "batch_mean_state_cell"]
ROW_MIXING = {"batchnorm_training_cell", "batch_mean_output_cell", "batch_mean_state_cell"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every factory (and the seed's step model file) exported, then verified in ONE fresh process."""
    base = tmp_path_factory.mktemp("factories")
    dirs = {}
    for name in FACTORIES:
        step_model, _ = load_step_model(f"tests.exporter.factories:{name}")
        dirs[name] = base / name
        write_export(step_model, dirs[name], name=name, source={"kind": "factory"})
    seed_file = factories.seed_step_model_file(base / "seed_case3.keras")
    step_model, _ = load_step_model(str(seed_file))
    dirs["seed_case3"] = base / "seed_case3"
    write_export(step_model, dirs["seed_case3"], name="seed", source={"kind": "keras_file"})

    # A broken export: the unclipped cell (same weights) carrying the clipped cell's golden.
    dirs["clip_lost"] = base / "clip_lost"
    write_export(load_step_model("tests.exporter.factories:unclipped_cell")[0], dirs["clip_lost"],
                 name="clip", source={"kind": "factory"})
    clipped = golden_io.load(golden_path(dirs["clip_cell"]))
    golden_io.save(clipped, golden_path(dirs["clip_lost"]))
    reports = verify_many_in_fresh_process(list(dirs.values()))
    return {name: (dirs[name], report) for name, report in zip(dirs, reports)}


@pytest.mark.parametrize("name", FACTORIES + ["seed_case3"])
def test_factory_exports_verify(exported, name):
    _, report = exported[name]
    assert report.passed, report.failures
    print(name, report.summary(), report.timings)


def test_clipped_gradient_survives_reload_and_unclipped_differs(exported):
    export_dir, report = exported["clip_cell"]
    loaded = tf.saved_model.load(str(export_dir))
    golden = golden_io.load(golden_path(export_dir))
    feed = {k.split("/")[-1]: v for k, v in golden.items() if k.startswith("serving_default/in/")}
    x = tf.constant(feed["inputs"])

    def input_gradient(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(fn(x) ** 2)
        return tape.gradient(total, x).numpy()

    clipped = input_gradient(lambda v: loaded.signatures["serving_default"](inputs=v)["outputs"])
    unclipped_model, _ = load_step_model("tests.exporter.factories:unclipped_cell")
    from exporter.trace import unroll

    unclipped = input_gradient(lambda v: unroll(unclipped_model, v, (tf.zeros([v.shape[0], 4]),))[0])
    difference = float(np.max(np.abs(clipped - unclipped)))
    print(f"clipped vs unclipped input gradient: max abs difference {difference:.3e}")
    assert difference > 1e-2


def test_gradient_check_fails_when_the_clip_is_lost(exported):
    _, report = exported["clip_lost"]
    failing = [c for c in report.failures if c.check == "gradients"]
    assert failing, report.summary()
    print("lost clip:", failing[0].tensor, failing[0].max_abs, failing[0].message)


def test_two_states_of_different_sizes(exported):
    export_dir, _ = exported["two_state_cell"]
    manifest = read_manifest(export_dir)
    assert [(s.name, s.shape) for s in manifest.states] == [("fast", (2,)), ("slow", (5,))]


def test_float64_gets_tighter_tolerances(exported):
    export_dir, report = exported["float64_cell"]
    assert read_manifest(export_dir).options.tolerance.atol <= 1e-10
    rows = [c for c in report.checks if c.check == "reload"]
    assert rows and all(c.atol <= 1e-10 for c in rows)
    worst = max(c.max_abs for c in report.checks if c.max_abs is not None and c.check != "batch independence")
    print(f"float64 worst error {worst:.2e}")


def test_higher_order_check_runs_and_can_fail(exported):
    export_dir, report = exported["clip_cell"]
    rows = [c for c in report.checks if c.check == "higher order"]
    assert rows and rows[0].passed and rows[0].max_abs is not None
    print("hvp", rows[0].max_abs)


def test_higher_order_without_bind_step_is_reported_not_crashed(exported):
    _, report = exported["two_state_cell"]
    rows = [c for c in report.checks if c.check == "higher order"]
    assert {r.signature for r in rows} == {"serving_default", "stream x2"}
    print("two-state hvp:", rows[0].max_abs, rows[0].message)
    assert all(r.passed and "bind_step" in r.message for r in rows)


@pytest.mark.parametrize("name", FACTORIES + ["seed_case3"])
def test_batch_independence_is_computed(exported, name):
    export_dir, report = exported[name]
    manifest_report = report.properties
    rows = [c for c in report.checks if c.check == "batch independence"]
    assert {r.signature for r in rows} == {"serving_default", "step"}
    print(f"{name}: largest off-diagonal {manifest_report['batch_offdiag_max']:.3e}")
    assert manifest_report["batch_independent"] is (name not in ROW_MIXING)
    if name in ROW_MIXING:
        assert manifest_report["batch_offdiag_max"] > 1e-3
    else:
        assert manifest_report["batch_offdiag_max"] == 0.0


def test_higher_order_check_fails_on_a_wrong_hessian_vector_product(tmp_path):
    from exporter.verification.run import verify_in_fresh_process

    step_model, _ = load_step_model("tests.exporter.factories:clip_cell")
    write_export(step_model, tmp_path / "hvp", name="clip", source={"kind": "factory"})
    golden = golden_io.load(golden_path(tmp_path / "hvp"))
    golden["higher/Hv/inputs"] = golden["higher/Hv/inputs"] + 1e-2
    golden_io.save(golden, golden_path(tmp_path / "hvp"))
    rows = [c for c in verify_in_fresh_process(tmp_path / "hvp").checks
            if c.check == "higher order" and c.tensor == "Hv/inputs"]
    print("tampered hvp:", [(r.signature, r.passed, r.max_abs) for r in rows])
    assert {r.signature for r in rows} == {"serving_default", "stream x2"}
    assert all(not r.passed and r.max_abs == pytest.approx(1e-2, rel=1e-3) for r in rows)
