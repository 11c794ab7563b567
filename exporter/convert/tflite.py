"""Convert one signature of an export to a LiteRT (`.tflite`) model.

Only through a frozen function (`graph.frozen_function`): converting a Keras 3
model's function directly keeps `VAR_HANDLE`/`READ_VARIABLE` ops without an
initializer, which return garbage. `assert_frozen` refuses such a model.

Whole-sequence models need a static batch (LiteRT lowers the unroll's TensorLists
only with a static element shape) and LiteRT's `WHILE` was measured O(T^2) over a
sequence, so the step model with a Python loop (`exporter.convert.runtimes.StepLoopBackend`)
is the default; `stream` is converted only when a batch size is given.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile

from exporter.artifact.errors import ConversionFailed
from exporter.convert.graph import frozen_function

VARIABLE_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE")


def operator_names(model: bytes) -> list[str]:
    """Builtin (or custom) operator names used by a `.tflite` flatbuffer, read from its schema."""
    from ai_edge_litert import schema_py_generated as schema  # optional dependency

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    root = schema.Model.GetRootAs(model, 0)
    found = set()
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        found.add(custom.decode() if custom else names.get(builtin, str(builtin)))
    return sorted(found)


def assert_frozen(model: bytes, *, what: str) -> None:
    """Raises ConversionFailed when the model still reads TF variables (unfrozen weights)."""
    variable_ops = sorted(set(operator_names(model)) & set(VARIABLE_OPS))
    if variable_ops:
        raise ConversionFailed(
            f"LiteRT model of {what} still has variable ops {variable_ops}: its weights were not "
            "frozen and it would return garbage. Convert through exporter.convert (it freezes first)."
        )


def _failed_ops(message: str) -> list[str]:
    return sorted(set(re.findall(r"'(tf\.[A-Za-z0-9_]+)'", message)))


@contextlib.contextmanager
def _quiet_stderr():
    """The MLIR converter prints every diagnostic to file descriptor 2 before raising
    them again in its exception; keep the terminal to the one message we raise."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def convert_function(function, *, signature: str, what: str) -> bytes:
    """A `.tflite` flatbuffer of a frozen concrete function (builtin ops only, float weights).

    The function goes through a temporary SavedModel that this module writes itself,
    so the model gets a SignatureDef named `signature` with the export's tensor keys.
    Saved without custom gradients: a converted model is inference-only, and TF
    cannot save gradient functions of a frozen graph.

    Raises:
        ConversionFailed: naming the TF op(s) LiteRT has no kernel for.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="seqexport-tflite-") as tmp:
        options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
        tf.saved_model.save(tf.Module(), tmp, signatures={signature: function}, options=options)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[signature])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            with _quiet_stderr():
                model = converter.convert()
        except Exception as exc:  # noqa: BLE001  the converter raises several unrelated types
            text = str(exc)
            ops = _failed_ops(text)
            if ops:
                why = f"op(s) {', '.join(ops)} have no LiteRT builtin kernel (or cannot be lowered)"
                if "TensorListReserve" in text and "element_shape" in text:
                    why += "; a whole-sequence model needs a static batch (pass a batch size)"
            else:
                why = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
            raise ConversionFailed(f"LiteRT cannot convert {what}: {why}.") from None
    assert_frozen(model, what=what)
    return model


def convert_signature(loaded, signature: str, *, batch: int | None = None) -> bytes:
    """Converts `signature` of a `graph.LoadedExport`; `batch` fixes its batch size."""
    what = f"signature {signature!r} of {loaded.manifest.name!r}"
    function = frozen_function(loaded.convertible_signature(signature), batch=batch)
    return convert_function(function, signature=signature, what=what)
