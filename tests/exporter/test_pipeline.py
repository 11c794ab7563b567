"""`export` against the disk: full, read-only, a link in place of the model folder, versions that exist.

The full and read-only disks are real: a small tmpfs mounted by the test (the
tests run as root; without the right to mount they are skipped, saying so).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.cli.app import app
from exporter.publish import LOCK_NAME, STAGING_PREFIX
from tests.exporter import models

runner = CliRunner()
PAGE = 4096


def _export(*args):
    return runner.invoke(app, ["export", *map(str, args), "--skip", "hvp"])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.keras"
    models.build("simple_rnn").save(path)
    return path


@pytest.fixture(scope="module")
def export_bytes(model_file, tmp_path_factory):
    """Pages one unverified export of `model_file` takes (tmpfs counts whole pages)."""
    import keras

    from exporter.artifact.specs import ExportOptions
    from exporter.keras_model import step_model_from_keras
    from exporter.pipeline import write_export

    folder = tmp_path_factory.mktemp("size") / "x"
    step_model = step_model_from_keras(keras.saving.load_model(model_file))
    write_export(step_model, folder, name="m", source={"kind": "test"}, options=ExportOptions(check_hvp=False))
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in folder.rglob("*") if p.is_file())


def _mount(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no `mount` command: the full-disk and read-only tests need to mount a small tmpfs")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}): the full-disk and read-only "
                    "tests need root or CAP_SYS_ADMIN")


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory):
    """A 32 MiB tmpfs, unmounted after the module."""
    path = tmp_path_factory.mktemp("tmpfs")
    _mount(path, "size=32m")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(mount: Path, leave: int) -> Path:
    """Fills the file system but `leave` bytes."""
    stats = os.statvfs(mount)
    free = stats.f_bavail * stats.f_frsize
    filler = mount / "filler"
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, free - leave)
    return filler


def _assert_nothing_half_written(model_dir: Path) -> None:
    if not model_dir.exists():
        return
    left = sorted(p.name for p in model_dir.iterdir())
    assert all(not name.isdigit() and not name.startswith(STAGING_PREFIX) for name in left), left


@pytest.mark.parametrize("leave_pages", [4, -1], ids=["during-saved-model", "last-files"])
def test_full_disk_is_exit_2_naming_the_path(model_file, export_bytes, tmpfs, leave_pages):
    """ENOSPC while the SavedModel is written, and while the last files are: a message, no traceback."""
    leave = leave_pages * PAGE if leave_pages > 0 else export_bytes + leave_pages * PAGE
    base = tmpfs / f"base-{leave_pages}"
    filler = _fill(tmpfs, leave)
    try:
        result = _export(model_file, "--name", "m", "--base", base)
    finally:
        filler.unlink()
    print(f"{export_bytes} bytes needed, {leave} left: exit {result.exit_code}: {result.output.strip()[-400:]}")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "No space left on device" in result.output
    assert str(base) in result.output and ".staging-" in result.output  # names where it was writing
    _assert_nothing_half_written(base / "m")
    assert not (base / "m").exists(), "a model folder this export created is removed again"


@pytest.fixture()
def read_only(tmp_path):
    """A tmpfs holding BASE/m/1 (a fake published version), remounted read-only."""
    mount = tmp_path / "ro"
    _mount(mount, "size=1m")
    (mount / "base" / "m" / "1").mkdir(parents=True)
    (mount / "base" / "m" / "1" / "saved_model.pb").write_text("published")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    yield mount / "base"
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("name", ["m", "new"], ids=["existing-model", "new-model"])
def test_read_only_base_is_exit_2_naming_the_path(model_file, read_only, name):
    before = sorted(str(p) for p in read_only.rglob("*"))
    result = _export(model_file, "--name", name, "--base", read_only)
    print(result.output)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Read-only file system" in result.output and str(read_only / name) in result.output
    assert sorted(str(p) for p in read_only.rglob("*")) == before


def test_model_folder_that_is_a_link_is_refused(model_file, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = tmp_path / "base"
    base.mkdir()
    (base / "m").symlink_to(elsewhere)
    result = _export(model_file, "--name", "m", "--base", base)
    print(result.output)
    assert result.exit_code == 2, result.output
    assert "is a symbolic link" in result.output and str(elsewhere) in result.output
    assert list(elsewhere.iterdir()) == [], "nothing may be written through the link"


def test_existing_version_is_refused_before_the_export_runs(model_file, tmp_path):
    base = tmp_path / "base"
    (base / "m" / "1").mkdir(parents=True)
    result = _export(model_file, "--name", "m", "--base", base, "--version", "1")
    assert result.exit_code == 2, result.output
    assert "Version 1 of 'm' already exists" in result.output and "--overwrite" in result.output
    assert "phase: trace" not in result.output, "refused before any work"
    assert sorted(p.name for p in (base / "m").iterdir()) == sorted(["1", LOCK_NAME])


def test_overwrite_needs_a_version(model_file, tmp_path):
    result = _export(model_file, "--name", "m", "--base", tmp_path / "b", "--overwrite")
    assert result.exit_code == 2 and "--overwrite replaces the version given with --version" in result.output
    assert not (tmp_path / "b").exists()


def test_overwrite_replaces_the_version_atomically_and_records_unsafe(model_file, tmp_path):
    """`--version 1 --overwrite` swaps a verified export in; `--unsafe` is recorded in its manifest."""
    from exporter.artifact.manifest import read_manifest

    base = tmp_path / "base"
    old = base / "m" / "1"
    (old / "variables").mkdir(parents=True)
    (old / "saved_model.pb").write_text("the old version")
    result = runner.invoke(app, ["export", str(model_file), "--name", "m", "--base", str(base), "--version", "1",
                                 "--overwrite", "--unsafe", "--skip", "hvp", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["replaced"] is True and payload["version"] == 1
    manifest = read_manifest(old)
    assert manifest.options.unsafe is True
    assert manifest.checks and all(c.passed for c in manifest.checks)
    assert (old / "saved_model.pb").read_bytes() != b"the old version"
    assert sorted(p.name for p in (base / "m").iterdir()) == sorted(["1", LOCK_NAME]), "old copy removed"
