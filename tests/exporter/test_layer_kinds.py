"""Every supported layer kind and option round-trips: export, then verify in ONE fresh process."""

from __future__ import annotations

import pytest

from exporter.artifact.specs import ExportOptions
from exporter.keras_model import step_model_from_keras
from exporter.pipeline import write_export
from exporter.verification.run import verify_many_in_fresh_process
from tests.exporter import models

pytestmark = pytest.mark.slow
NO_HVP = ExportOptions(check_hvp=False)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    base = tmp_path_factory.mktemp("kinds")
    dirs = {}
    for name in models.SUPPORTED:
        step_model = step_model_from_keras(models.build(name))
        dirs[name] = base / name
        # The Hessian-vector product is checked on the demo, factory and --jit exports; here it
        # would double the time of 15 exports without covering another code path.
        write_export(step_model, dirs[name], name=name, source={"kind": "test"}, options=NO_HVP)
    return dict(zip(dirs, verify_many_in_fresh_process(list(dirs.values()))))


@pytest.mark.parametrize("name", sorted(models.SUPPORTED))
def test_round_trip_verifies(reports, name):
    report = reports[name]
    worst = max(report.checks, key=lambda c: c.max_abs or 0.0)
    print(f"{name}: {report.summary()}; worst {worst.check} {worst.signature} {worst.tensor} {worst.max_abs:.2e}")
    assert report.passed, [c for c in report.failures]
    checks = {c.check for c in report.checks}
    assert {"weights", "reload", "gradients", "source", "chunked"} <= checks


def test_masked_models_take_lengths(tmp_path):
    step_model = step_model_from_keras(models.build("masking"))
    assert step_model.masked
    assert not step_model_from_keras(models.build("lstm")).masked


def test_last_step_only_is_recorded():
    assert step_model_from_keras(models.build("last_step_only")).last_step_only
    assert step_model_from_keras(models.build("masking_last_step")).last_step_only
