"""`manifest.json`: what an export is, read and written in one place (no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

from exporter.artifact.errors import BadInput
from exporter.artifact.paths import manifest_path
from exporter.artifact.specs import Manifest


def write_manifest(manifest: Manifest, export_dir: Path) -> None:
    """Writes the manifest whole or not at all (a temporary file, then a rename)."""
    path = manifest_path(export_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=False))
    tmp.replace(path)


def has_manifest(export_dir: Path) -> bool:
    return manifest_path(export_dir).is_file()


def read_manifest(export_dir: Path) -> Manifest:
    """The manifest of `export_dir`.

    Raises:
        BadInput: there is none, or it is not a manifest this version reads (the message says which).
    """
    path = manifest_path(export_dir)
    try:
        return Manifest.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise BadInput(f"{str(export_dir)!r} has no seqexport manifest ({path.relative_to(export_dir)}); "
                       "it was not made by seqexport.") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"Manifest of {str(export_dir)!r} is unreadable: {exc}") from None
