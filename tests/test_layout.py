"""The layout holds: import-linter's contracts (pyproject.toml) are kept and do break on a wrong arrow,
and no function-level import hides a light module."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO_ROOT, import_graph

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture()
def tree_copy(tmp_path) -> Path:
    """The two packages and pyproject.toml in a scratch folder, to break on purpose."""
    for package in import_graph.PACKAGES:
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_contracts_are_kept():
    result = _lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("serving/deploy.py", "from exporter.publish import model_dir", "serving reads exports through exporter.artifact only"),
    ("exporter/trace.py", "from serving import tensors", "exporter below the CLI and tools never imports serving"),
    ("exporter/artifact/paths.py", "import tensorflow", "the artifact contract imports neither TensorFlow"),
    ("exporter/fs.py", "from exporter import load", "exporter: CLI, tools, pipeline"),
    ("serving/deploy.py", "from serving import client", "serving: Beam transforms, client"),
    ("serving/serving_files.py", "from serving import beam", "serving: Beam transforms, client"),
    ("exporter/artifact/paths.py", "from exporter.artifact import manifest", "no import cycles"),
])
def test_a_wrong_arrow_breaks_its_contract(tree_copy, module, line, contract):
    path = tree_copy / module
    path.write_text(path.read_text() + f"\n{line}  # the arrow under test\n")
    result = _lint_imports(tree_copy)
    assert result.returncode == 1, result.stdout
    broken = [row for row in result.stdout.splitlines() if "BROKEN" in row or contract in row]
    assert any(contract in row for row in broken), result.stdout
    assert "1 broken" in result.stdout, result.stdout


def test_function_level_imports_load_something_heavy():
    """A function-level import must keep a heavy package (TensorFlow, Keras, gRPC, a runtime) out of
    its module's import; one that loads nothing new is written at the top, or says why with `# lazy:`."""
    needless = import_graph.needless_function_imports(import_graph.all_imports())
    assert not needless, "move to the module's top: " + ", ".join(f"{i.module}:{i.line}" for i in needless)


def test_the_function_import_check_finds_a_light_import(tree_copy, monkeypatch):
    path = tree_copy / "serving" / "deploy.py"
    path.write_text(path.read_text() + "\n\ndef _added():\n    import json\n    return json\n")
    monkeypatch.setattr(import_graph, "ROOT", tree_copy)
    needless = import_graph.needless_function_imports(import_graph.all_imports())
    assert [(i.module, i.targets) for i in needless] == [("serving.deploy", ("json",))]
