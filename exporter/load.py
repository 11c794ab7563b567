"""Turn the MODEL argument into a `StepModel`: a `.keras` file, a SavedModel, or a factory.

Each loader says what went wrong in terms of the user's input (the file, the
factory, the layer), never with a traceback of ours.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys
import zipfile
from pathlib import Path

from exporter.artifact.errors import BadInput, SeqExportError, UnsupportedModel
from exporter.artifact.specs import SourceKind
from exporter.step_model import StepModel

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_UNKNOWN_CLASS = re.compile(r"Could not locate (?:class|function) '([\w.>]+)'")


# A Keras model file: the `.keras` zip, or the legacy HDF5 file older TensorFlow saved (`model.save("m.h5")`),
# which Keras 3 still loads.
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def classify(model_ref: str) -> SourceKind:
    """Which kind of source MODEL names, without loading anything heavy."""
    path = Path(model_ref)
    if path.suffix in KERAS_SUFFIXES:
        return SourceKind.KERAS_FILE
    if path.is_dir():
        return SourceKind.SAVED_MODEL
    if _FACTORY.match(model_ref) and not path.exists():
        return SourceKind.FACTORY
    if not path.exists():
        raise BadInput(
            f"Model {model_ref!r} not found. Give a .keras file, a SavedModel directory, "
            "or a factory as package.module:function."
        )
    raise BadInput(
        f"Model {model_ref!r} is not a Keras model file (.keras, or a legacy .h5), a SavedModel directory or a "
        "package.module:function factory. Save a Keras model with model.save('model.keras')."
    )


def source_info(model_ref, kind: SourceKind) -> dict:
    """Kind, reference and content hash of the source, for the manifest."""
    if kind is SourceKind.IN_MEMORY:
        return {"kind": kind.value, "ref": f"{type(model_ref).__name__} {getattr(model_ref, 'name', '')}".strip()}
    info = {"kind": kind.value, "ref": model_ref}
    path = Path(model_ref)
    digest = hashlib.sha256()
    if kind is SourceKind.KERAS_FILE:
        digest.update(path.read_bytes())
        info["sha256"] = digest.hexdigest()
    elif kind is SourceKind.SAVED_MODEL:
        for file in sorted(p for p in path.rglob("*") if p.is_file() and "assets.extra" not in p.parts):
            digest.update(str(file.relative_to(path)).encode())
            digest.update(file.read_bytes())
        info["sha256"] = digest.hexdigest()
    return info


def load_step_model(model_ref, *, unsafe: bool = False, fall_back: bool = False,
                    max_length: int | None = None) -> tuple[StepModel, SourceKind]:
    """Loads MODEL (a reference string, or an in-memory `keras.Model` / `StepModel`) as a step model.

    `fall_back`: a Keras model that cannot run step by step gets a whole-sequence model instead
    (`exporter.keras_model.step_model_from_keras`).

    Raises:
        BadInput: the file is missing or unreadable, or the factory fails.
        UnsupportedModel: a layer cannot run step by step.
    """
    if isinstance(model_ref, StepModel):
        return model_ref, SourceKind.IN_MEMORY
    if not isinstance(model_ref, (str, os.PathLike)):
        import keras

        if not isinstance(model_ref, keras.Model):
            raise BadInput(f"Expected a keras.Model, an exporter.StepModel or a model reference string; "
                           f"got {type(model_ref).__name__}.")
        from exporter.keras_model import step_model_from_keras

        return step_model_from_keras(model_ref, description=f"in-memory Keras model {model_ref.name!r}",
                                     fall_back=fall_back, max_length=max_length), SourceKind.IN_MEMORY
    model_ref = str(model_ref)
    kind = classify(model_ref)
    if kind is SourceKind.KERAS_FILE:
        return _from_keras_file(Path(model_ref), unsafe=unsafe, fall_back=fall_back, max_length=max_length), kind
    if kind is SourceKind.SAVED_MODEL:
        from exporter.saved_step import step_model_from_saved_model

        return step_model_from_saved_model(Path(model_ref)), kind
    return _from_factory(model_ref, fall_back=fall_back, max_length=max_length), kind


def _from_keras_file(path: Path, *, unsafe: bool, fall_back: bool, max_length: int | None) -> StepModel:
    if not path.is_file():
        raise BadInput(f"Keras file {str(path)!r} not found.")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise BadInput(
            f"{str(path)!r} is not a valid .keras file (a .keras file is a zip archive). "
            "Re-save the model with model.save('model.keras')."
        )
    if path.suffix != ".keras" and not _is_hdf5(path):
        raise BadInput(f"{str(path)!r} is not a valid HDF5 model file (the legacy format of model.save('model.h5')). "
                       "Re-save the model with model.save('model.keras').")
    import keras

    import exporter.layers  # noqa: F401  registers seqexport's own serializable layers

    try:
        model = keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
    except Exception as exc:  # Keras raises many types for one cause: a file it cannot rebuild.
        raise BadInput(keras_load_error(path, exc)) from None
    from exporter.keras_model import step_model_from_keras

    return step_model_from_keras(model, description=f"Keras file {path.name}", fall_back=fall_back,
                                 max_length=max_length)


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89HDF\r\n\x1a\n"


# Keras nests the error of each object it could not rebuild in its parent's: the last is the cause.
_NESTED_CAUSE = "Exception encountered: "
_UNEXPECTED_KEYWORD = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")
_MISSING_ARGUMENT = re.compile(r"(\w+)\.__init__\(\) missing \d+ required positional arguments?: (.+)")


def keras_load_error(path: Path, exc: Exception) -> str:
    """What Keras said when it could not load `path` (its innermost cause first), then what to do."""
    text = str(exc).strip()
    cause = text.split(_NESTED_CAUSE)[-1].strip() if text else type(exc).__name__
    cause = cause.splitlines()[0] if cause else type(exc).__name__
    cause = cause.split(" Full object config:")[0].split(" config=")[0].rstrip(".")
    if "safe_mode" in text or "Lambda" in text:
        hint = ("The file holds code (a Lambda layer) that Keras safe mode refuses to run. If you trust the file, pass "
                "--unsafe (recorded in the manifest).")
    elif (unexpected := _UNEXPECTED_KEYWORD.search(text)) is not None:
        hint = (f"Keras rebuilds every layer with `name`, `trainable` and `dtype` among its arguments, and "
                f"{unexpected.group(1)}.__init__ does not take {unexpected.group(2)!r}: give it `**kwargs` and pass "
                "them on (`super().__init__(**kwargs)`), then run again with --import on the module that defines it "
                "(the file's weights load into the fixed class). Re-saving the model does not help; exporting it "
                "in memory does: `exporter.export(model, ...)` from Python.")
    elif (missing := _MISSING_ARGUMENT.search(text)) is not None:
        hint = (f"{missing.group(1)} has no `get_config` returning its arguments ({missing.group(2)}), so Keras "
                "cannot rebuild it: add one, save the model again, or export it in memory with "
                "`exporter.export(model, ...)` from Python.")
    elif "custom" in text.lower() or "Could not locate" in text:
        hint = _unregistered_hint(text)
    else:
        hint = ("Keras cannot rebuild the model from this file; fix what it says, or export the model in memory "
                "with `exporter.export(model, ...)` from Python.")
    return f"Could not load Keras model {str(path)!r}: {cause}. {hint}"


def _unregistered_hint(text: str) -> str:
    missing = _UNKNOWN_CLASS.search(text)
    what = "a custom object"
    module = "MODULE"
    if missing:
        what = f"custom class {missing.group(1)!r}"
        saved_in = re.search(r"'module': '([\w.]+)', 'class_name': '" + re.escape(missing.group(1)), text)
        if saved_in and not saved_in.group(1).startswith("keras"):
            what += f" (saved from module {saved_in.group(1)!r})"
            module = saved_in.group(1)
    return (
        f"The file uses {what}, which is not registered, and seqexport does not import code a "
        f"file names. If you trust the module that defines it (decorated with "
        f"@keras.saving.register_keras_serializable), pass --import {module} (it runs that "
        "module), or write a step-model factory."
    )


def import_user_module(module_name: str):
    """Imports a module of the user's (a factory's, or one `--import` names), from the current folder too
    (as `python -c` would; a console script's sys.path does not hold it)."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(module_name)


def _from_factory(ref: str, *, fall_back: bool, max_length: int | None = None) -> StepModel:
    module_name, _, function_name = ref.partition(":")
    try:
        module = import_user_module(module_name)
    except Exception as exc:
        raise BadInput(f"Could not import factory module {module_name!r}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise BadInput(f"{module_name!r} has no callable {function_name!r}.")
    try:
        result = factory()
    except SeqExportError:
        raise
    except Exception as exc:
        raise BadInput(f"Factory {ref!r} raised {type(exc).__name__}: {exc}") from None
    if isinstance(result, StepModel):
        return result
    import keras

    if isinstance(result, keras.Model):
        from exporter.keras_model import step_model_from_keras

        return step_model_from_keras(result, description=f"factory {ref}", fall_back=fall_back,
                                     max_length=max_length)
    raise UnsupportedModel(
        f"Factory {ref!r} returned {type(result).__name__}; it must return an exporter.StepModel "
        "(a step function with its specs) or a Keras model."
    )
