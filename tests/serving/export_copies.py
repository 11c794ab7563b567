"""Copies of the pytest session's demo export laid out as BASE/NAME/VERSION, with edited manifests."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from exporter.artifact.paths import manifest_path
from exporter.artifact.specs import Manifest


def set_batch_independent(version_dir: Path, value: bool | None, offdiag: float | None = None) -> None:
    path = manifest_path(version_dir)
    manifest = Manifest.from_json(json.loads(path.read_text()))
    manifest = dataclasses.replace(manifest, batch_independent=value, batch_offdiag_max=offdiag)
    path.write_text(json.dumps(manifest.to_json(), indent=2))


def make_base(root: Path, source: Path, *, name: str = "demo", versions: dict[int, bool | None]) -> Path:
    """`root/base/name/<v>` for each v, copied from `source`, with `batch_independent` set."""
    base = root / "base"
    for version, proven in versions.items():
        target = base / name / str(version)
        shutil.copytree(source, target)
        set_batch_independent(target, proven, None if proven is not False else 0.25)
    return base
