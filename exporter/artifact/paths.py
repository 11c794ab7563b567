"""Where each file of an export lives (design.md, "What an export directory holds")."""

from __future__ import annotations

from pathlib import Path

SAVED_MODEL_FILE = "saved_model.pb"
SEQEXPORT_DIR = Path("assets.extra") / "seqexport"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
# TF Serving refuses a warmup file with more records (WarmupConsts::kMaxNumRecords).
MAX_WARMUP_RECORDS = 1000


def manifest_path(export_dir: Path) -> Path:
    return Path(export_dir) / SEQEXPORT_DIR / "manifest.json"


def golden_path(export_dir: Path) -> Path:
    return Path(export_dir) / SEQEXPORT_DIR / "golden.npz"


def is_saved_model_dir(path: Path) -> bool:
    return (Path(path) / SAVED_MODEL_FILE).is_file()


def version_folders(model_dir: Path, *, loadable: bool = False) -> dict[int, Path]:
    """`{version: folder}` under `<base>/<name>/`: sub-folders whose name is a number, as TF Serving sees them.

    With `loadable`, only those with a `saved_model.pb` inside (TF Serving skips a folder
    still being copied until it has one); without, every number already taken.
    Staging folders and any other non-numeric name are never listed.
    """
    try:
        entries = list(Path(model_dir).iterdir())
    except OSError:
        return {}
    return {
        int(path.name): path
        for path in entries
        if path.name.isdigit() and path.is_dir() and (not loadable or is_saved_model_dir(path))
    }
