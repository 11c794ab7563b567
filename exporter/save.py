"""Write the SavedModel (the seqexport files beside it: `exporter.artifact`)."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from exporter.trace import TracedExport


def save_saved_model(traced: TracedExport, export_dir: Path, *, custom_gradients: bool = True) -> None:
    """`tf.saved_model.save` with every signature.

    Args:
        custom_gradients: keep `tf.custom_gradient` functions in the graph. Always on
            in seqexport; False exists only to build the broken export a test needs.
    """
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=custom_gradients)
    tf.saved_model.save(traced.module, str(export_dir), signatures=traced.functions, options=options)
