"""Sub-commands beyond the core, one module each; every module defines `register(app)`.

`exporter.cli` registers every module of this package. A module must not import
TensorFlow (or any optional runtime) at import time: `--help` stays fast.
"""
