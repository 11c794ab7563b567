"""One line for an error a check caught, and what to do about it where that is known."""

from __future__ import annotations

CUSTOM_GRADIENT_HELP = (
    "The SavedModel has an op whose gradient is a tf.custom_gradient, but it was saved "
    "without tf.saved_model.SaveOptions(experimental_custom_gradients=True): the gradient "
    "existed only in the exporting process's registry and is gone after a restart. "
    "Re-export with seqexport (it always saves with that option), or pass "
    "options=tf.saved_model.SaveOptions(experimental_custom_gradients=True) to tf.saved_model.save."
)


def explain(exc: Exception) -> str:
    """The first line of an error, with what to do where seqexport knows it (a lost custom gradient)."""
    text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if isinstance(exc, LookupError) and "No gradient defined" in str(exc):
        return f"{text}. {CUSTOM_GRADIENT_HELP}"
    return text
