"""Atomic publish: never a partial version folder, even when the export is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.errors import BadInput
from exporter.publish import clean_stale_staging, new_staging_dir, publish, versions
from tests.exporter import models

pytestmark = pytest.mark.slow
POLL_S = 0.02
DEADLINE_S = 180


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pub") / "m.keras"
    models.build("lstm").save(path)
    return path


def _start_export(model_file, base, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "export", str(model_file), "--name", "m", "--base", str(base),
         "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for(predicate, proc):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(POLL_S)
    raise AssertionError("export did not reach the phase in time")


def _staging(base) -> list[Path]:
    return list((base / "m").glob(".staging-*")) if (base / "m").is_dir() else []


def _in_save(base):
    return any((d / "saved_model.pb").exists() or (d / "variables").exists() for d in _staging(base))


def _in_verify(base):
    return any((d / "assets.extra" / "seqexport" / "manifest.json").exists() for d in _staging(base))


@pytest.mark.parametrize("phase", [_in_save, _in_verify], ids=["during-save", "during-verify"])
def test_sigkill_leaves_no_version_and_next_export_cleans_up(model_file, tmp_path, phase):
    base = tmp_path / "base"
    proc = _start_export(model_file, base)
    reached = _wait_for(lambda: phase(base), proc)
    assert reached, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert versions(base / "m") == [], "a killed export must not publish"
    assert _staging(base), "the killed export's staging folder is what the next run must clean"

    proc = _start_export(model_file, base)
    out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err
    assert versions(base / "m") == [1]
    assert _staging(base) == []


def test_two_exports_at_once_get_their_own_versions(model_file, tmp_path):
    base = tmp_path / "base"
    procs = [_start_export(model_file, base) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=DEADLINE_S)
        assert proc.returncode == 0, err
    assert versions(base / "m") == [1, 2]
    for version in (1, 2):
        assert (base / "m" / str(version) / "assets.extra" / "seqexport" / "golden.npz").is_file()


def test_existing_version_is_refused(tmp_path):
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "3").mkdir()
    staging = new_staging_dir(directory)
    (staging / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(BadInput, match="Version 3 of 'm' already exists"):
        publish(staging, directory, version=3)
    version, path = publish(staging, directory)
    assert version == 4 and (path / "saved_model.pb").is_file()


def test_stale_staging_of_dead_process_is_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".staging-{dead.pid}-abcd"
    stale.mkdir()
    live = new_staging_dir(tmp_path)
    assert clean_stale_staging(tmp_path) == [stale]
    assert live.is_dir() and not stale.exists()
