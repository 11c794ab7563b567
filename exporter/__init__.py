"""seqexport: export stateful sequence models as verified, explicit-state SavedModels.

Public names only; nothing imported here loads TensorFlow (`export()` does, when called).

Example (the end of a training script):
    >>> import exporter
    >>> result = exporter.export(model, name="mymodel", base="/srv/models")  # doctest: +SKIP
    >>> result.path, result.report.passed  # doctest: +SKIP
"""

from pathlib import Path

from exporter.artifact.errors import BadInput, SeqExportError, UnsupportedModel, VerificationIncomplete, VerifyFailed
from exporter.artifact.paths import SAVED_MODEL_FILE
from exporter.artifact.specs import CheckResult, ExportOptions, Manifest, StateSpec, Tolerance
from exporter.artifact.version import VERSION as __version__
from exporter.step_model import StepModel
from exporter.verification.run import DEFAULT_TIMEOUT_S, verify_in_fresh_process


def export(model, *, name: str, base, version: int | None = None, overwrite: bool = False,
           options: ExportOptions | None = None, verify_timeout_s: float | None = None):
    """Exports `model` (a `keras.Model`, a `StepModel` or a reference string) as `<base>/<name>/<version>/`.

    The same pipeline as `seqexport export`: verified in a fresh process, published only if
    every check passed. Returns the `ExportResult`; raises what the CLI turns into exit codes
    (`VerifyFailed` and `VerificationIncomplete`: 1, `BadInput`/`UnsupportedModel`: 2).
    """
    from exporter import pipeline  # the whole build: Keras, TensorFlow, the verifier's driver

    return pipeline.export(model, name=name, base=Path(base), version=version, overwrite=overwrite,
                           options=options or ExportOptions(),
                           verify_timeout_s=verify_timeout_s or DEFAULT_TIMEOUT_S)


def verify(path, *, timeout_s: float | None = None):
    """Re-runs every check on an export folder in a fresh process; returns its `VerifyReport`."""
    if not (Path(path) / SAVED_MODEL_FILE).is_file():
        raise BadInput(f"{str(path)!r} is not a SavedModel directory (no {SAVED_MODEL_FILE} in it).")
    return verify_in_fresh_process(Path(path), timeout_s=timeout_s or DEFAULT_TIMEOUT_S)


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
