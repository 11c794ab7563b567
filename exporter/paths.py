"""Where each file of an export lives (design.md, "What an export directory holds")."""

from __future__ import annotations

from pathlib import Path

SEQEXPORT_DIR = Path("assets.extra") / "seqexport"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


def manifest_path(export_dir: Path) -> Path:
    return Path(export_dir) / SEQEXPORT_DIR / "manifest.json"


def golden_path(export_dir: Path) -> Path:
    return Path(export_dir) / SEQEXPORT_DIR / "golden.npz"
