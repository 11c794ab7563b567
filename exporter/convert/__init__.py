"""Convert an export for other runtimes (LiteRT, ONNX Runtime, Triton), each checked against its goldens.

One module per target (`tflite`, `onnx`, `triton`; `triton_model` is the Python-backend
`model.py`, `triton_server` runs the real `tritonserver`, `triton_check` checks a repository
on it), `graph` for the frozen TF function they all start from, `parity` for the
checks, `targets` to run a target end to end, `bench` to time the drivers. Nothing here imports TensorFlow or an
optional runtime at import time; the drivers live in `exporter.convert.runtimes`.
"""

from exporter.convert.targets import ConversionReport, ModelFile, convert_export, convert_in_export

__all__ = ["ConversionReport", "ModelFile", "convert_export", "convert_in_export"]
