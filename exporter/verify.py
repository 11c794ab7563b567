"""Verify an export in a fresh Python process and collect its `CheckResult`s.

The child gets a clean environment (no inherited PYTHONPATH beyond seqexport's
own package), so nothing registered by the exporting process can help it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import exporter
from exporter.errors import SeqExportError
from exporter.specs import CheckResult, CheckRows

DEFAULT_TIMEOUT_S = 900.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerifyReport(CheckRows):
    """All rows of one verification; `passed` only when every row passed."""

    export_dir: str
    checks: tuple[CheckResult, ...]
    seconds: float = 0.0
    timings: dict = dataclasses.field(default_factory=dict)
    properties: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        return f"all {len(self.checks)} checks passed" if self.passed else self.failure_summary()

    def to_json(self) -> dict:
        return {
            "export_dir": self.export_dir,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "properties": self.properties,
            "checks": [c.to_json() for c in self.checks],
        }


def _clean_env() -> dict[str, str]:
    package_root = str(Path(exporter.__file__).resolve().parent.parent)
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(PYTHONPATH=package_root, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0",
               CUDA_VISIBLE_DEVICES="-1", PYTHONNOUSERSITE="1")
    return env


def _die_with_parent():
    """Linux: the child gets SIGKILL when the exporting process dies (e.g. is killed)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def verify_in_fresh_process(export_dir: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> VerifyReport:
    """Runs every check on `export_dir` in a new interpreter.

    Raises:
        SeqExportError: the child crashed or timed out (its stderr tail is in the message).
    """
    return verify_many_in_fresh_process([export_dir], timeout_s=timeout_s)[0]


def verify_many_in_fresh_process(
    export_dirs: list[Path], *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[VerifyReport]:
    """Like `verify_in_fresh_process` for several exports, in ONE new interpreter.

    Each export is loaded on its own; the process is fresh with respect to the
    process that made them, which is what the custom-gradient check needs.
    """
    import time

    dirs = [Path(d).resolve() for d in export_dirs]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seqexport-verify-") as tmp:
        out = Path(tmp) / "checks.json"
        command = [sys.executable, "-m", "exporter.verify_worker", *map(str, dirs), "--out", str(out)]
        try:
            proc = subprocess.run(
                command, env=_clean_env(), capture_output=True, text=True, timeout=timeout_s,
                preexec_fn=_die_with_parent, cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            raise SeqExportError(
                f"Verification of {', '.join(map(str, dirs))} took over {timeout_s:.0f} s and was stopped."
            ) from None
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise SeqExportError(
                f"The verification process for {', '.join(map(str, dirs))} crashed "
                f"(exit {proc.returncode}):\n{tail}"
            )
        results = json.loads(out.read_text())
    seconds = (time.monotonic() - started) / len(dirs)
    return [
        VerifyReport(
            export_dir=str(d),
            checks=tuple(CheckResult.from_json(c) for c in results[str(d)]["checks"]),
            seconds=seconds,
            timings=results[str(d)]["timings"],
            properties=results[str(d)]["properties"],
        )
        for d in dirs
    ]
