"""Exports shared by the runtime-conversion tests: one per RNN kind, written once per session."""

from __future__ import annotations

import pytest

from tests.exporter.convert.common import KINDS


@pytest.fixture(scope="session")
def kind_exports(tmp_path_factory):
    """`{kind: export dir}`, written by `write_export` (goldens included, not verified)."""
    from exporter.keras_step import step_model_from_keras
    from exporter.pipeline import write_export
    from tests.exporter import models

    base = tmp_path_factory.mktemp("runtime_kinds")
    dirs = {}
    for kind in KINDS:
        dirs[kind] = base / kind
        write_export(step_model_from_keras(models.build(kind)), dirs[kind], name=kind, source={"kind": "test"})
    return dirs


@pytest.fixture(scope="session")
def kind_loaded(kind_exports):
    from exporter.convert.graph import load_export

    return {kind: load_export(path) for kind, path in kind_exports.items()}


@pytest.fixture(scope="session")
def demo_loaded(demo_export):
    from exporter.convert.graph import load_export

    return load_export(demo_export.path)

