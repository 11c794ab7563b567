"""Write the SavedModel (the seqexport files beside it: `exporter.artifact`)."""

from __future__ import annotations

import re
from pathlib import Path

import tensorflow as tf

from exporter.artifact.errors import BadInput
from exporter.trace import TracedExport


def save_saved_model(traced: TracedExport, export_dir: Path, *, custom_gradients: bool = True) -> None:
    """`tf.saved_model.save` with every signature.

    Args:
        custom_gradients: keep `tf.custom_gradient` functions in the graph. Always on
            in seqexport; False exists only to build the broken export a test needs.
    """
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=custom_gradients)
    try:
        tf.saved_model.save(traced.module, str(export_dir), signatures=traced.functions, options=options)
    except ValueError as exc:
        # Keras names a model after its class (`_Encoder` -> `__encoder`), and TF refuses such a
        # variable name in a SavedModel.
        found = _BAD_SCOPE.search(str(exc))
        if found is None:
            raise
        raise BadInput(f"TF cannot save a variable named {found.group(1)!r}: a SavedModel's names start with a letter, "
                       "digit or '.'. Give the model and its layers names that do (`name=` in their constructor; "
                       "Keras names a model after its class, so a class named `_Encoder` gives `__encoder`).") from None


_BAD_SCOPE = re.compile(r"'([^']+)' is not a valid root scope name")
