"""seqexport: export stateful sequence models as verified, explicit-state SavedModels.

Public names only; TensorFlow is imported lazily by the functions that need it.

Example (the end of a training script):
    >>> import exporter
    >>> result = exporter.export(model, name="mymodel", base="/srv/models")  # doctest: +SKIP
    >>> result.path, result.report.passed  # doctest: +SKIP
"""

__version__ = "0.1.0"

from exporter.errors import BadInput, SeqExportError, UnsupportedModel, VerificationIncomplete, VerifyFailed
from exporter.specs import CheckResult, ExportOptions, Manifest, StateSpec, Tolerance
from exporter.step_model import StepModel

# Imported before `verify()` below is defined: a later first import of the submodule would
# otherwise rebind the package attribute `exporter.verify` from the function to the module.
from exporter import verify as _verify_module  # noqa: E402  (TF-free)


def export(model, *, name: str, base, version: int | None = None, overwrite: bool = False,
           options: ExportOptions | None = None, verify_timeout_s: float | None = None):
    """Exports `model` (a `keras.Model`, a `StepModel` or a reference string) as `<base>/<name>/<version>/`.

    The same pipeline as `seqexport export`: verified in a fresh process, published only if
    every check passed. Returns the `ExportResult`; raises what the CLI turns into exit codes
    (`VerifyFailed` and `VerificationIncomplete`: 1, `BadInput`/`UnsupportedModel`: 2).
    """
    from pathlib import Path

    from exporter import pipeline

    return pipeline.export(model, name=name, base=Path(base), version=version, overwrite=overwrite,
                           options=options or ExportOptions(),
                           verify_timeout_s=verify_timeout_s or _verify_module.DEFAULT_TIMEOUT_S)


def verify(path, *, timeout_s: float | None = None):
    """Re-runs every check on an export folder in a fresh process; returns its `VerifyReport`."""
    from pathlib import Path

    if not (Path(path) / "saved_model.pb").is_file():
        raise BadInput(f"{str(path)!r} is not a SavedModel directory (no saved_model.pb in it).")
    return _verify_module.verify_in_fresh_process(Path(path), timeout_s=timeout_s or _verify_module.DEFAULT_TIMEOUT_S)


__all__ = [
    "BadInput",
    "CheckResult",
    "ExportOptions",
    "Manifest",
    "SeqExportError",
    "StateSpec",
    "StepModel",
    "Tolerance",
    "UnsupportedModel",
    "VerificationIncomplete",
    "VerifyFailed",
    "__version__",
    "export",
    "verify",
]
