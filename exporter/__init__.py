"""seqexport: export stateful sequence models as verified, explicit-state SavedModels.

Public names only; TensorFlow is imported lazily by the functions that need it.
"""

__version__ = "0.1.0"

from exporter.errors import BadInput, SeqExportError, UnsupportedModel, VerifyFailed
from exporter.specs import CheckResult, ExportOptions, Manifest, StateSpec, Tolerance
from exporter.step_model import StepModel

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
    "VerifyFailed",
    "__version__",
]
