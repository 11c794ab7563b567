"""Shared fixtures: the demo model is trained and exported ONCE per session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

# Fixtures used by tests in several folders (a module's tests live where the module does).
pytest_plugins = ["tests.fixtures.serving", "tests.fixtures.runtimes", "tests.fixtures.several_outputs",
                  "tests.fixtures.static_inputs", "tests.fixtures.masked_graphs",
                  "tests.fixtures.sequence_inputs", "tests.fixtures.generate", "tests.fixtures.whole_sequence"]


@pytest.fixture(scope="session")
def demo_keras_file(tmp_path_factory):
    from exporter.tools.demo import train_demo_model

    return train_demo_model(tmp_path_factory.mktemp("demo") / "demo.keras", seconds=1.0)


@pytest.fixture(scope="session")
def demo_export(demo_keras_file, tmp_path_factory):
    """The demo model exported and verified by the real pipeline (fresh process included)."""
    from exporter.pipeline import export

    base = tmp_path_factory.mktemp("base")
    return export(str(demo_keras_file), name="demo", base=base)
