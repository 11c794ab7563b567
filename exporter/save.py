"""Write the SavedModel and the seqexport files beside it."""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from exporter.paths import manifest_path
from exporter.specs import Manifest
from exporter.trace import TracedExport


def save_saved_model(traced: TracedExport, export_dir: Path, *, custom_gradients: bool = True) -> None:
    """`tf.saved_model.save` with every signature.

    Args:
        custom_gradients: keep `tf.custom_gradient` functions in the graph. Always on
            in seqexport; False exists only to build the broken export a test needs.
    """
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=custom_gradients)
    tf.saved_model.save(traced.module, str(export_dir), signatures=traced.functions, options=options)


def write_manifest(manifest: Manifest, export_dir: Path) -> None:
    path = manifest_path(export_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=False))
    tmp.replace(path)


def read_manifest(export_dir: Path) -> Manifest:
    return Manifest.from_json(json.loads(manifest_path(export_dir).read_text()))
