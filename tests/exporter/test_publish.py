"""Atomic publish: never a partial or unverified version folder, whatever kills the export.

Fast tests drive `exporter.publish` directly on real folders; the slow one runs
`python -m exporter.cli.app export` and SIGKILLs it at random moments.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from exporter import fs
from exporter.artifact.errors import BadInput
from exporter.artifact.names import check_name
from exporter.publish import (
    LOCK_NAME,
    OWNER_SUFFIX,
    STAGING_PREFIX,
    check_exchange_supported,
    clean_stale_staging,
    model_lock,
    new_staging,
    publish,
)
from tests import REPO_ROOT

DEADLINE_S = 300
POLL_S = 0.005
KILLS = 20
# Of the KILLS moments, these are drawn inside one phase each (phase, how long after it
# starts, as a fraction of its duration in the first export), so the short phases are
# hit; the others are spread evenly over the whole export, one random moment per slot.
ANCHORED = (("trace", 1.0), ("save", 1.0), ("publish", 2.0))
_CLEANED = re.compile(r"removed the staging folder of a dead export: (\S+) \(")


# ----------------------------------------------------------------------------- fakes and readers


def _fake_version(directory: Path, marker: str) -> Path:
    """A staging folder holding a recognisable fake version (no TensorFlow needed)."""
    staging = new_staging(directory)
    (staging.path / "saved_model.pb").write_text(marker)
    (staging.path / "variables").mkdir()
    (staging.path / "variables" / "variables.index").write_text(marker)
    return staging


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def _staging_entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(STAGING_PREFIX))


# ----------------------------------------------------------------------------- names and versions


@pytest.mark.parametrize("name", ["../up", "..", ".", ".hidden", "a/b", "a\\b", "a:b", "", "-x", "sp ace",
                                  "x" * 129, "mod\u00e8le", "new\nline", "nul\x00", "per%2Fcent", "semi;colon"])
def test_names_tf_serving_or_a_file_system_would_reject_are_refused(name):
    with pytest.raises(BadInput, match="is not allowed"):
        check_name(name)


@pytest.mark.parametrize("name", ["demo", "Demo-2", "a.b_c", "x" * 128, "7"])
def test_plain_names_are_accepted(name):
    assert check_name(name) == name


def test_existing_version_is_refused_then_next_number(tmp_path):
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "3").mkdir()
    staging = _fake_version(directory, "new")
    with pytest.raises(BadInput, match="Version 3 of 'm' already exists.*--overwrite"):
        publish(staging, directory, version=3)
    assert not (directory / "3" / "saved_model.pb").exists(), "the refused version must be untouched"
    version, path, replaced = publish(staging, directory)
    staging.release()
    assert (version, replaced) == (4, False) and (path / "saved_model.pb").read_text() == "new"
    assert _staging_entries(directory) == []


def test_an_empty_folder_at_the_version_is_not_replaced_silently(tmp_path):
    """rename(2) replaces an empty directory; publish must not (RENAME_NOREPLACE)."""
    directory = tmp_path / "m"
    directory.mkdir()
    staging = _fake_version(directory, "new")
    (directory / "5").mkdir()
    with pytest.raises(BadInput, match="Version 5"):
        publish(staging, directory, version=5)
    staging.release()


# ----------------------------------------------------------------------------- overwrite


def test_overwrite_swaps_in_place_and_removes_the_old_one(tmp_path):
    directory = tmp_path / "m"
    directory.mkdir()
    old = _fake_version(directory, "old")
    publish(old, directory, version=1)
    old.release()
    new = _fake_version(directory, "new")
    version, path, replaced = publish(new, directory, version=1, overwrite=True)
    assert (version, replaced) == (1, True)
    assert (path / "saved_model.pb").read_text() == "new"
    assert (new.path / "saved_model.pb").read_text() == "old", "the swap leaves the old version in staging"
    new.release()
    assert sorted(p.name for p in directory.iterdir()) == sorted(["1", LOCK_NAME])


def test_overwrite_refuses_a_link_at_the_version(tmp_path):
    directory = tmp_path / "m"
    directory.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("precious")
    (directory / "1").symlink_to(elsewhere)
    staging = _fake_version(directory, "new")
    with pytest.raises(BadInput, match="not a plain folder"):
        publish(staging, directory, version=1, overwrite=True)
    staging.release()
    assert (elsewhere / "keep").read_text() == "precious" and (directory / "1").is_symlink()


def test_overwrite_where_the_file_system_cannot_swap_is_refused(tmp_path, monkeypatch):
    """The fallback: no two-step replace (TF Serving would see the version missing); exit 2, nothing changed.

    No local file system here refuses RENAME_EXCHANGE (NFS and some FUSE ones do),
    so the kernel's answer, EINVAL, is simulated at the one ctypes call.
    """
    directory = tmp_path / "m"
    directory.mkdir()
    old = _fake_version(directory, "old")
    publish(old, directory, version=1)
    old.release()
    real = fs.renameat2

    def refuse_exchange(src, dst, flags):
        if flags == fs.RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(src, dst, flags)

    monkeypatch.setattr(fs, "renameat2", refuse_exchange)
    staging = _fake_version(directory, "new")
    with pytest.raises(BadInput, match="refuses it .*Invalid argument.*nothing was changed"):
        check_exchange_supported(staging)
    with pytest.raises(BadInput, match="RENAME_EXCHANGE"):
        publish(staging, directory, version=1, overwrite=True)
    staging.release()
    assert (directory / "1" / "saved_model.pb").read_text() == "old"
    assert _staging_entries(directory) == []


_WATCHER = textwrap.dedent("""
    import os, sys, time
    target, seconds = sys.argv[1], float(sys.argv[2])
    seen, missing, partial = set(), 0, 0
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with open(os.path.join(target, "saved_model.pb")) as f:
                marker = f.read()
            with open(os.path.join(target, "variables", "variables.index")) as f:
                if f.read() != marker:
                    partial += 1
            seen.add(marker)
        except FileNotFoundError:
            missing += 1
    print(missing, partial, len(seen), flush=True)
""")


def _watch(target: Path, replace, seconds: float = 2.0) -> tuple[int, int, int, int]:
    """Another process reads `target` as TF Serving would while `replace(i)` runs in a loop.

    Returns (times a file of the version was missing, times its two files came from
    different versions, versions seen, swaps made). The second is information, not
    a failure: a reader that opens files one by one can straddle even an atomic
    swap (why TF Serving never reloading a version number it holds matters).
    """
    watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, str(target), str(seconds)],
                               stdout=subprocess.PIPE, text=True)
    assert watcher.stdout.readline().strip() == "ready"
    swaps = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        replace(swaps)
        swaps += 1
    missing, partial, seen = map(int, watcher.stdout.readline().split())
    watcher.wait(timeout=30)
    return missing, partial, seen, swaps


def test_overwrite_is_never_seen_missing_or_mixed(tmp_path):
    directory = tmp_path / "m"
    directory.mkdir()
    first = _fake_version(directory, "v0")
    publish(first, directory, version=1)
    first.release()

    def replace(i):
        staging = _fake_version(directory, f"v{i + 1}")
        publish(staging, directory, version=1, overwrite=True)
        staging.release()

    missing, partial, seen, swaps = _watch(directory / "1", replace)
    print(f"atomic swap: {swaps} swaps, reader saw {seen} distinct versions, missing {missing}, mixed {partial}")
    assert swaps > 10 and seen > 2, "the reader must have watched real swaps"
    assert missing == 0


def test_the_watcher_catches_a_two_step_replace(tmp_path):
    """The same reader against rename-away-then-rename-in: it sees the version missing."""
    directory = tmp_path / "m"
    directory.mkdir()
    first = _fake_version(directory, "v0")
    publish(first, directory, version=1)
    first.release()

    def naive(i):
        staging = _fake_version(directory, f"v{i + 1}")
        aside = directory / f".old-{i}"
        os.rename(directory / "1", aside)
        os.rename(staging.path, directory / "1")
        staging.release()
        shutil.rmtree(aside)

    missing, partial, seen, swaps = _watch(directory / "1", naive)
    print(f"two-step replace: {swaps} swaps, missing {missing}")
    assert missing > 0


# ----------------------------------------------------------------------------- staging owners


def test_only_staging_of_dead_exports_is_cleaned(tmp_path):
    directory = tmp_path / "m"
    directory.mkdir()
    live = new_staging(directory)  # this process: alive, its owner lock held

    # A dead export's staging: created by a child that exits without cleaning up.
    code = ("import sys; from pathlib import Path; from exporter.publish import new_staging; "
            "s = new_staging(Path(sys.argv[1])); print(s.path); import os; os._exit(0)")
    dead = Path(subprocess.run([sys.executable, "-c", code, str(directory)], capture_output=True, text=True,
                               check=True, cwd=REPO_ROOT).stdout.strip())
    assert dead.is_dir() and (dead.parent / (dead.name + OWNER_SUFFIX)).exists()

    legacy = directory / f"{STAGING_PREFIX}{_dead_pid()}-abcd"  # an older seqexport: no owner file
    legacy.mkdir()
    lone_owner = directory / f"{STAGING_PREFIX}1-feed{OWNER_SUFFIX}"  # killed before its folder existed
    lone_owner.write_text("")
    target = tmp_path / "not-ours"
    target.mkdir()
    (target / "keep").write_text("precious")
    planted = directory / f"{STAGING_PREFIX}{_dead_pid()}-link"  # a link dressed as staging
    planted.symlink_to(target)

    cleaned = clean_stale_staging(directory)
    print("\n".join(map(str, cleaned)))
    assert sorted(c.path for c in cleaned) == sorted([dead, legacy, planted])
    assert "owner lock was free" in next(str(c) for c in cleaned if c.path == dead)
    assert live.path.is_dir(), "a live export's staging must be kept"
    assert (target / "keep").read_text() == "precious", "a link is removed, never followed"
    assert _staging_entries(directory) == sorted([live.path.name, live.path.name + OWNER_SUFFIX])
    live.release()
    assert _staging_entries(directory) == []


def test_lock_file_planted_as_a_link_is_not_followed(tmp_path):
    directory = tmp_path / "m"
    directory.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (directory / LOCK_NAME).symlink_to(victim)
    with pytest.raises(BadInput, match="Cannot write to"):
        with model_lock(directory):
            pass
    assert victim.read_text() == "keep"


# ----------------------------------------------------------------------------- SIGKILL, for real


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from tests.exporter import models

    path = tmp_path_factory.mktemp("pub") / "m.keras"
    models.build("simple_rnn").save(path)
    return path


class _Run:
    """`python -m exporter.cli.app export ... --json` with its stderr lines timestamped as they come."""

    def __init__(self, model_file: Path, base: Path, *extra: str):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli.app", "export", str(model_file), "--name", "m", "--base", str(base),
             "--json", "--skip", "hvp", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: list[tuple[float, str]] = []
        self._stdout: list[str] = []
        # One reader per pipe: `communicate()` would also read stderr and take lines (a cleanup
        # announcement, say) from under the stderr reader.
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=lambda: self._stdout.append(self.proc.stdout.read()), daemon=True)]
        for reader in self._readers:
            reader.start()
        self.stdout = ""

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))

    def phase_started(self, phase: str) -> float | None:
        return next((t for t, line in list(self.lines) if line == f"phase: {phase}"), None)

    def phase(self) -> str:
        phases = [line[len("phase: "):] for _, line in self.lines if line.startswith("phase: ")]
        return phases[-1] if phases else "startup"

    def cleaned(self) -> list[str]:
        return [m.group(1) for _, line in self.lines if (m := _CLEANED.search(line))]

    def finish(self, timeout: float = DEADLINE_S) -> int:
        self.proc.wait(timeout=timeout)
        self.seconds = time.monotonic() - self.started
        for reader in self._readers:
            reader.join(timeout=30)
        self.stdout = "".join(self._stdout)
        return self.proc.returncode

    def result(self) -> dict:
        return json.loads(self.stdout)


def _assert_only_verified_versions(model_dir: Path) -> list[int]:
    """Every numbered folder is a complete export whose manifest says every check passed."""
    from exporter.artifact.manifest import read_manifest

    found = []
    for entry in model_dir.iterdir():
        if not entry.name.isdigit():
            assert entry.name.startswith((STAGING_PREFIX, LOCK_NAME)), entry
            continue
        assert entry.is_dir() and not entry.is_symlink(), entry
        for part in ("saved_model.pb", "variables/variables.index", "assets.extra/tf_serving_warmup_requests",
                     "assets.extra/seqexport/golden.npz"):
            assert (entry / part).is_file(), f"{entry} lacks {part}"
        manifest = read_manifest(entry)
        assert manifest.checks and all(c.passed for c in manifest.checks), f"{entry} is not verified"
        found.append(int(entry.name))
    return sorted(found)


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _kill_plan(rng: random.Random, first: _Run) -> list[tuple[str, float]]:
    """KILLS moments: ("at", seconds after start) spread evenly, or ("after <phase>", delay)."""
    timings = first.result()["timings"]
    total = first.seconds
    spread = KILLS - len(ANCHORED)
    # Over 85% of the first export's time: a later export on a less loaded (shared) machine is
    # faster, and a moment planned near the end would then land after it finished.
    plan = [("at", 0.85 * total * (i + rng.random()) / spread) for i in range(spread)]
    plan += [(f"after {phase}", rng.uniform(0, scale * timings[phase])) for phase, scale in ANCHORED]
    rng.shuffle(plan)
    return plan


def _kill_at(run: _Run, how: str, delay: float) -> bool:
    """SIGKILLs `run` at the planned moment; False if it finished first."""
    anchor = 0.0
    deadline = time.monotonic() + DEADLINE_S
    while run.proc.poll() is None and time.monotonic() < deadline:
        if how != "at":
            started = run.phase_started(how.split(" ", 1)[1])
            if started is None:
                time.sleep(POLL_S)
                continue
            anchor = started
        if time.monotonic() - run.started >= anchor + delay:
            run.proc.send_signal(signal.SIGKILL)
            return True
        time.sleep(POLL_S)
    return False


@pytest.mark.slow
def test_sigkill_at_random_moments_then_four_exports_at_once(model_file, tmp_path):
    """20 SIGKILLs over the whole export, then 4 concurrent exports of the same name.

    After every kill: only complete, verified versions under BASE/NAME, and no
    process of the dead export left running. The exports that follow remove the
    dead staging folders (and say so); the 4 concurrent ones each get their own
    version number.
    """
    seed = int(os.environ.get("SEQEXPORT_KILL_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    base = tmp_path / "base"
    model_dir = base / "m"

    first = _Run(model_file, base)
    assert first.finish() == 0, first.lines
    assert _assert_only_verified_versions(model_dir) == [1]
    plan = _kill_plan(rng, first)

    dead_staging: dict[str, int] = {}  # staging folder -> kill number
    reported: dict[str, int] = {}      # staging folder -> run number that removed it
    rows = []
    for number, (how, delay) in enumerate(plan, start=1):
        run = _Run(model_file, base)
        _kill_at(run, how, delay)
        code = run.finish()
        # A kill sent in the instant the export exits lands on a finished process: exit 0.
        killed = code == -signal.SIGKILL
        for path in run.cleaned():
            reported.setdefault(path, number)
        at = run.lines[-1][0] if run.lines else 0.0
        outcome = f"killed in {run.phase()}" if killed else f"finished first (exit {code})"
        if not killed:
            assert code == 0, run.lines
        published = _assert_only_verified_versions(model_dir)
        mine = [p for p in model_dir.iterdir() if p.name.startswith(f"{STAGING_PREFIX}{run.proc.pid}-")
                and not p.name.endswith(OWNER_SUFFIX)]
        for path in mine:
            dead_staging[str(path)] = number
            deadline = time.monotonic() + 10  # the verify child dies with its parent (PR_SET_PDEATHSIG)
            while (orphans := _processes_mentioning(str(path))) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not orphans, f"processes of the killed export still run: {orphans}"
        rows.append((number, how, delay, outcome, at, [p.name for p in mine], published))

    runs = [_Run(model_file, base, "--seed", str(seed_)) for seed_ in (11, 12, 13, 14)]
    codes = [run.finish() for run in runs]
    for run in runs:
        for path in run.cleaned():
            reported.setdefault(path, KILLS + 1)
    results = [run.result() for run in runs if run.stdout]

    print(f"\nkill seed {seed} (set SEQEXPORT_KILL_SEED to repeat); first export {first.seconds:.1f} s")
    print(f"{'#':>3} {'planned':<16} {'delay s':>7} {'outcome':<22} {'staging left':<30} versions after")
    for number, how, delay, outcome, _, mine, published in rows:
        print(f"{number:>3} {how:<16} {delay:7.2f} {outcome:<22} {','.join(mine) or '-':<30} {published}")
    killed = sum(1 for row in rows if row[3].startswith("killed"))
    by_phase = {}
    for row in rows:
        by_phase[row[3]] = by_phase.get(row[3], 0) + 1
    print(f"kill points tried {len(rows)}, killed {killed}, invariant held after all {len(rows)}; by outcome {by_phase}")
    print(f"dead staging folders {len(dead_staging)}, removed and reported {len(set(reported) & set(dead_staging))}")
    print(f"4 concurrent exports: exit codes {codes}, versions {[r.get('version') for r in results]}")

    assert codes == [0, 0, 0, 0], [run.lines[-5:] for run in runs]
    assert len(rows) == KILLS and killed >= KILLS - 3, "most planned moments must land inside the export"
    assert len({row[3] for row in rows if row[3].startswith("killed")}) >= 4, "kills must spread over phases"
    new_versions = sorted(r["version"] for r in results)
    assert len(set(new_versions)) == 4
    published = _assert_only_verified_versions(model_dir)
    assert set(new_versions) <= set(published)
    assert _staging_entries(model_dir) == [], "every dead staging folder must be gone"
    assert set(dead_staging) <= set(reported), "each removal must be reported"
    assert set(reported) <= set(dead_staging), "only staging folders of killed exports may be removed"
    for number in (r["version"] for r in results):  # none corrupts another: each holds its own export
        from exporter.artifact.golden_io import load
        from exporter.artifact.manifest import read_manifest

        folder = model_dir / str(number)
        seed_ = read_manifest(folder).options.seed
        golden = load(folder / "assets.extra" / "seqexport" / "golden.npz")
        want = np.random.default_rng(seed_).normal(size=golden["serving_default/in/inputs"].shape)
        np.testing.assert_array_equal(golden["serving_default/in/inputs"], want.astype(np.float32))
    assert sorted(read_seed(model_dir / str(r["version"])) for r in results) == [11, 12, 13, 14]


def read_seed(folder: Path) -> int:
    from exporter.artifact.manifest import read_manifest

    return read_manifest(folder).options.seed
