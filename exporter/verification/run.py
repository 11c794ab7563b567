"""Verify an export in a fresh Python process and collect its `CheckResult`s.

The child gets a clean environment (no inherited PYTHONPATH beyond seqexport's
own package), so nothing registered by the exporting process can help it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from exporter.artifact.errors import VerificationIncomplete
from exporter.artifact.specs import CheckResult, VerifyReport

PARENT_PID_VARIABLE = "SEQEXPORT_PARENT_PID"  # the worker dies with the process it names (worker.die_with_parent)

# Generous: a 12.7 M-parameter LSTM stack verified in under a minute on 2 shared cores.
DEFAULT_TIMEOUT_S = 3600.0


def fresh_process_env() -> dict[str, str]:
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding `exporter/`
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(PYTHONPATH=package_root, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0",
               CUDA_VISIBLE_DEVICES="-1", PYTHONNOUSERSITE="1")
    return env


def _no_progress(_: str) -> None:
    pass


def verify_in_fresh_process(
    export_dir: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S, progress: Callable[[str], None] = _no_progress,
) -> VerifyReport:
    """Runs every check on `export_dir` in a new interpreter.

    Args:
        timeout_s: the verification is stopped after this many seconds.
        progress: called with "<check> (<done>/<total> done)" as each check starts.

    Raises:
        VerificationIncomplete: the child crashed or ran past `timeout_s` (exit 1); the
            message names the check that was running.
    """
    return verify_many_in_fresh_process([export_dir], timeout_s=timeout_s, progress=progress)[0]


class _ProgressReader(threading.Thread):
    """Reads the worker's JSON progress lines as they come; remembers the check running now."""

    def __init__(self, stream, progress: Callable[[str], None]):
        super().__init__(daemon=True)
        self.stream = stream
        self.progress = progress
        self.current = "start"
        self.done = 0
        self.total = 0
        self.first_event_at: float | None = None

    def run(self) -> None:
        for line in self.stream:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a library printing to stdout: not ours
            if not isinstance(event, dict) or event.get("event") != "check":
                continue
            self.current, self.done, self.total = event["check"], event["done"], event["total"]
            if self.first_event_at is None:
                self.first_event_at = time.monotonic()
            self.progress(f"{self.current} ({self.done}/{self.total} done)")


def verify_many_in_fresh_process(
    export_dirs: list[Path], *, timeout_s: float = DEFAULT_TIMEOUT_S, progress: Callable[[str], None] = _no_progress,
) -> list[VerifyReport]:
    """Like `verify_in_fresh_process` for several exports, in ONE new interpreter.

    Each export is loaded on its own; the process is fresh with respect to the
    process that made them, which is what the custom-gradient check needs.
    """
    dirs = [Path(d).resolve() for d in export_dirs]
    where = ", ".join(map(str, dirs))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seqexport-verify-") as tmp:
        out = Path(tmp) / "checks.json"
        errors = Path(tmp) / "stderr.txt"
        command = [sys.executable, "-m", "exporter.verification.worker", *map(str, dirs), "--out", str(out)]
        with open(errors, "w+") as stderr:
            # The child dies with this process (the worker arms PR_SET_PDEATHSIG itself, after exec: code
            # between fork and exec, a `preexec_fn`, is unsafe in a process with threads; gRPC's aborted so).
            env = {**fresh_process_env(), PARENT_PID_VARIABLE: str(os.getpid())}
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tmp)
            reader = _ProgressReader(proc.stdout, progress)
            reader.start()
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise VerificationIncomplete(
                    f"Verification of {where} ran past its limit of {timeout_s:.0f} s during the check "
                    f"{reader.current!r} ({reader.done} of {reader.total or '?'} checks done) and was stopped "
                    "(an export under verification is not published). Give it more time with --verify-timeout SECONDS."
                ) from None
            finally:
                reader.join(timeout=5)
            stderr.seek(0)
            tail = "\n".join(stderr.read().strip().splitlines()[-8:])
        if returncode != 0 or not out.is_file():
            raise VerificationIncomplete(
                f"The verification process for {where} crashed (exit {returncode}) during the check "
                f"{reader.current!r} (an export under verification is not published):\n{tail}"
            )
        results = json.loads(out.read_text())
    seconds = (time.monotonic() - started) / len(dirs)
    # "start": the new interpreter's own start and imports, until it reported its first check.
    start = {"start": (reader.first_event_at or started) - started}
    return [
        VerifyReport(
            export_dir=str(d),
            checks=tuple(CheckResult.from_json(c) for c in results[str(d)]["checks"]),
            seconds=seconds,
            timings={**(start if i == 0 else {}), **results[str(d)]["timings"]},
            properties=results[str(d)]["properties"],
            peak_rss_mb=results[str(d)].get("peak_rss_mb"),
        )
        for i, d in enumerate(dirs)
    ]
