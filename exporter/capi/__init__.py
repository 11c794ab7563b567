"""Run a SavedModel through TensorFlow's C API, as TF Serving's C++ loader does.

`seqexport_run.c` is compiled with gcc on first use (see `runner.build`) against
the shared libraries and headers that ship inside the `tensorflow` wheel.
"""

from exporter.capi.runner import CapiRun, CapiResult, build, run_saved_model

__all__ = ["CapiResult", "CapiRun", "build", "run_saved_model"]
