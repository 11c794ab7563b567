"""Convert an export for one runtime, check it against `golden.npz`, write model files + `parity.json`.

What each target gets (files relative to the output folder):

| target | files | whole sequence |
|---|---|---|
| `tflite` | `step.tflite`; `stream_b<N>.tflite` when a batch N is given; `initial_state.tflite` with static inputs | only at a static batch, and LiteRT's `WHILE` was measured O(T^2): use the step driver |
| `onnx` | `step.onnx`, `stream.onnx`; `initial_state.onnx` with static inputs | yes: a `Loop`, dynamic batch and time |
| `triton` | `NAME/VERSION/model.onnx` + `NAME/config.pbtxt` (a model repository, ONNX Runtime backend) | no: Triton keeps the state and feeds one step per request |
| `triton-python` | `NAME/VERSION/{model.py,step.onnx}` (+ `initial_state.onnx` with static inputs) + `NAME/config.pbtxt` (Python backend) | a chunk per request; `model.py` keeps the state per correlation id |

A whole-sequence export (it cannot stream) gets its `serving_default` only: `serving_default.onnx`,
`serving_default_b<N>.tflite`, and, for both Triton targets, a repository without a sequence
batcher (`model.onnx`, or `serving_default.onnx` run by `model.py`), one request of whole sequences
(`exporter/convert/triton.py`).

Several outputs: each is an output of the converted models, by name, and every one is
checked. Static inputs: an input of each converted model, by name, fed with every call; the
`initial_state` signature is converted too (its states may start from them). Other sequence
inputs: an input of each converted model, by name (one step in `step`, the chunk in `stream`);
the drivers cut them into the same chunks as `inputs`. Both Triton targets take several outputs
(each a config output by name); static inputs only `triton-python` (an input of every request;
`initial_state.onnx` sets the state on START): `triton` refuses them (exit 2), Triton's implicit
state starting from zeros or a file only. Neither Triton target takes several sequence inputs yet.

Gradients are TF-only: no converted model has `input_gradients`, and a
`tf.custom_gradient` in the export (the demo has one) exists only in the SavedModel.
A conversion that fails or does not match gives failed rows, never an exception,
so `export --targets` can still publish the (valid) TF export.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

from exporter.artifact.compare import failed
from exporter.artifact.errors import (
    BadInput,
    ConversionFailed,
    refuse_context_inputs,
    refuse_extra_inputs,
)
from exporter.artifact.names import check_name
from exporter.artifact.paths import SEQEXPORT_DIR
from exporter.artifact.specs import CheckResult, CheckRows, RuntimeTarget, Tolerance
from exporter.convert import onnx, tflite, triton
from exporter.convert.graph import custom_gradient_ops, load_export
from exporter.convert.parity import driver_checks, generate_driver_checks, model_checks
from exporter.convert.runtimes import LiteRTModel, OrtModel, SequenceBackend, StepLoopBackend

# The optional packages each target imports: (module, pip package).
REQUIREMENTS = {
    RuntimeTarget.TFLITE: (("ai_edge_litert", "ai-edge-litert"),),
    RuntimeTarget.ONNX: (("tf2onnx", "tf2onnx"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime")),
    RuntimeTarget.TRITON: (("tf2onnx", "tf2onnx"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                           ("tritonclient.grpc", "tritonclient[grpc]")),
    RuntimeTarget.TRITON_PYTHON: (("tf2onnx", "tf2onnx"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                                  ("tritonclient.grpc", "tritonclient[grpc]")),
}
# Targets that take one sequence input and one output only (Triton's configs name `y` and the states).
TRITON_TARGETS = frozenset({RuntimeTarget.TRITON, RuntimeTarget.TRITON_PYTHON})
PARITY_FILE = "parity.json"
RUNTIMES_DIR = "runtimes"  # under assets.extra/seqexport/ of a version folder
STEP_DRIVER = "step driver"
STREAM_DRIVER = "stream model"
GRADIENTS_NOTE = (
    "Gradients are TF-only: converted models are inference-only (no input_gradients); "
    "use the TF SavedModel to train or to take gradients."
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelFile:
    """One converted model file.

    Attributes:
        path: relative to the report's `out_dir`.
        signature: the export signature it was converted from (`step` or `stream`).
        batch: the static batch size it takes, or None for any.
        size: bytes on disk.
        seconds: conversion time.
    """

    path: str
    signature: str
    batch: int | None
    size: int
    seconds: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConversionReport(CheckRows):
    """What one target produced and how it compared to the golden outputs (`parity.json`).

    Attributes:
        target: `tflite`, `onnx` or `triton`.
        export_dir: the version folder converted (never written to by `convert`).
        out_dir: where the files are.
        files: the model files written.
        checks: parity rows (`check` is the target; failures carry the reason).
        notes: what the user should know (gradients TF-only, what was not converted and why).
        seconds: wall time of conversion and checks together.
    """

    target: str
    export_dir: str
    out_dir: str
    files: tuple[ModelFile, ...]
    checks: tuple[CheckResult, ...]
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def summary(self) -> str:
        if self.passed:
            return f"{self.target}: all {len(self.checks)} parity checks passed"
        return f"{self.target}: {self.failure_summary('parity checks')}"

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "passed": self.passed,
            "export_dir": self.export_dir,
            "out_dir": self.out_dir,
            "files": [f.to_json() for f in self.files],
            "checks": [c.to_json() for c in self.checks],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_json(cls, data: dict) -> "ConversionReport":
        return cls(
            target=data["target"],
            export_dir=data["export_dir"],
            out_dir=data["out_dir"],
            files=tuple(ModelFile(**f) for f in data["files"]),
            checks=tuple(CheckResult.from_json(c) for c in data["checks"]),
            notes=tuple(data.get("notes", ())),
            seconds=data.get("seconds", 0.0),
        )


def _target(target: str | RuntimeTarget) -> RuntimeTarget:
    try:
        return RuntimeTarget(target)
    except ValueError:
        raise BadInput(
            f"Unknown target {target!r}. Choose from: {', '.join(t.value for t in RuntimeTarget)}."
        ) from None


def check_dependencies(targets) -> None:
    """Raises BadInput naming the missing package when a target's optional dependency is absent."""
    for target in map(_target, targets):
        missing = []
        for module, package in REQUIREMENTS[target]:
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:  # a parent package is missing
                found = False
            if not found:
                missing.append(package)
        if missing:
            raise BadInput(
                f"Target {target.value!r} needs {', '.join(missing)}, which is not installed: "
                "pip install 'seqexport[runtimes]'."
            )


def _write(path: Path, content: bytes) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    tmp.replace(path)
    return len(content)


class _Run:
    """Collects files, rows and notes for one target."""

    def __init__(self, loaded, target: RuntimeTarget, out_dir: Path, tolerance: Tolerance):
        self.loaded = loaded
        self.target = target
        self.out_dir = out_dir
        self.tolerance = tolerance
        self.files: list[ModelFile] = []
        self.checks: list[CheckResult] = []
        self.notes: list[str] = []

    def convert(self, signature: str, relative: str, make, *, batch: int | None = None) -> bytes | None:
        """Runs the converter `make()`; writes the file; a ConversionFailed becomes a failed row."""
        started = time.monotonic()
        try:
            content = make()
        except ConversionFailed as exc:
            self.checks.append(failed(self.target.value, signature, "*", str(exc)))
            return None
        except Exception as exc:  # noqa: BLE001  a converter bug is still a failed conversion, reported
            message = f"conversion crashed: {type(exc).__name__}: {str(exc).strip()[:500]}"
            self.checks.append(failed(self.target.value, signature, "*", message))
            return None
        seconds = time.monotonic() - started
        size = _write(self.out_dir / relative, content)
        self.files.append(ModelFile(path=relative, signature=signature, batch=batch, size=size, seconds=seconds))
        return content

    def load(self, signature: str, load):
        """The model `load()` returns, or None with a failed row when the runtime refuses the file."""
        try:
            return load()
        except Exception as exc:  # noqa: BLE001  the runtime refusing the file is the finding
            self.checks.append(failed(self.target.value, signature, "*", f"the runtime cannot load the converted "
                                      f"model: {type(exc).__name__}: {str(exc).strip()[:500]}"))
            return None

    def check(self, signature: str, load, *, batch: int | None = None, initial=None) -> None:
        """Parity of the model `load()` returns, on its own golden signature and as a chunked driver.

        `initial`: the converted `initial_state` model of an export with static inputs (the driver
        starts from the states it sets).
        """
        name = self.target.value
        model = self.load(signature, load)
        if model is None:
            return
        golden, manifest = self.loaded.golden, self.loaded.manifest
        self.checks.extend(model_checks(name, signature, model, golden, self.tolerance))
        sequences = [i.name for i in manifest.sequence_inputs]
        if signature == "step":
            backend = StepLoopBackend(model, initial, sequences=sequences, pad_value=manifest.mask_pad_value)
            label, exact = STEP_DRIVER, False
        else:
            backend, label, exact = SequenceBackend(model, initial, sequences=sequences), STREAM_DRIVER, True
        self.checks.extend(driver_checks(name, label, backend, manifest, golden, self.tolerance,
                                         batch=batch, exact_padding=exact))
        if signature == "step":  # the `generate` loop over the converted step model, against the source's
            self.checks.extend(generate_driver_checks(name, backend, manifest, golden, self.tolerance))

    def report(self, started: float) -> ConversionReport:
        return ConversionReport(
            target=self.target.value,
            # Absolute: `check triton REPO` finds the export from here, whatever folder it runs in.
            export_dir=str(Path(self.loaded.path).resolve()),
            out_dir=str(self.out_dir),
            files=tuple(self.files),
            checks=tuple(self.checks),
            notes=tuple(self.notes),
            seconds=time.monotonic() - started,
        )


def _common_notes(loaded) -> list[str]:
    notes = [GRADIENTS_NOTE]
    custom = custom_gradient_ops(loaded.signature("step" if loaded.manifest.streams else "serving_default"))
    if custom:
        notes.append(
            f"The export has a tf.custom_gradient ({', '.join(custom)}): converted for inference, "
            "its gradient exists only in the TF SavedModel."
        )
    if loaded.manifest.masked:
        notes.append(
            "Masked export: the step driver feeds the pad value past each sequence's length (the export "
            "treats those steps as padding, each layer's mask decides); its outputs at padded steps are "
            "zeros (checked: valid steps and final states)."
        )
    return notes


def _initial_model(run: _Run, relative: str, convert, load):
    """An export with static or context inputs: its `initial_state` converted and checked (the states
    may start from them: an encoder's run there), for the drivers to start from; None otherwise, or
    when it failed."""
    if not run.loaded.manifest.static_inputs and not run.loaded.manifest.context_inputs:
        return None
    content = run.convert("initial_state", relative, lambda: convert(run.loaded, "initial_state"))
    model = None if content is None else run.load("initial_state", lambda: load(content))
    if model is not None:
        run.checks.extend(model_checks(run.target.value, "initial_state", model, run.loaded.golden, run.tolerance))
    return model


def _tflite(run: _Run, stream_batch: int | None) -> None:
    loaded = run.loaded
    initial = _initial_model(run, "initial_state.tflite", tflite.convert_signature, LiteRTModel)
    content = run.convert("step", "step.tflite", lambda: tflite.convert_signature(loaded, "step"))
    if content is not None:
        run.check("step", lambda: LiteRTModel(content), initial=initial)
    if stream_batch is None:
        run.notes.append(
            "LiteRT whole-sequence model not converted: it needs a static batch, and LiteRT's WHILE loop "
            "was measured O(T^2) in sequence length; the step model with a Python loop stays flat. "
            "Pass a batch size (--stream-batch) to convert it anyway."
        )
        return
    relative = f"stream_b{stream_batch}.tflite"
    content = run.convert("stream", relative, lambda: tflite.convert_signature(loaded, "stream", batch=stream_batch),
                          batch=stream_batch)
    if content is not None:
        run.check("stream", lambda: LiteRTModel(content), batch=stream_batch, initial=initial)


def _onnx(run: _Run) -> None:
    initial = _initial_model(run, "initial_state.onnx", onnx.convert_signature, OrtModel)
    for signature in ("step", "stream"):
        content = run.convert(signature, f"{signature}.onnx", lambda s=signature: onnx.convert_signature(run.loaded, s))
        if content is not None:
            run.check(signature, lambda c=content: OrtModel(c), initial=initial)


def _whole_sequence(run: _Run, relative: str, make, load, *, batch: int | None = None) -> bool:
    """A whole-sequence export: its `serving_default` converted by `make()` into `relative`, and checked on
    the golden probe; False when the conversion failed (its row says why)."""
    content = run.convert("serving_default", relative, make, batch=batch)
    model = None if content is None else run.load("serving_default", lambda: load(content))
    if model is not None:
        run.checks.extend(model_checks(run.target.value, "serving_default", model, run.loaded.golden, run.tolerance))
    run.notes.append(f"Whole-sequence export ({run.loaded.manifest.whole_sequence}): serving_default converted, "
                     "one call per whole sequence.")
    return content is not None


def _triton_whole_sequence(run: _Run, name: str, version: int, options) -> None:
    """A whole-sequence export's Triton repository (no sequence batcher: nothing to keep between requests)."""
    python = run.target is RuntimeTarget.TRITON_PYTHON
    backend = triton.Backend.PYTHON if python else triton.Backend.ONNXRUNTIME
    proven = run.loaded.manifest.batch_independent

    def make() -> bytes:
        content = onnx.convert_signature(run.loaded, "serving_default")
        _, *others = triton.write_whole_sequence_repository(
            run.out_dir, name=name, version=version, onnx_model=content, options=options, batch_independent=proven,
            backend=backend)
        for path in others if python else ():
            run.files.append(ModelFile(path=path.relative_to(run.out_dir).as_posix(), signature="serving_default",
                                       batch=None, size=path.stat().st_size, seconds=0.0))
        return content  # what the repository's model file holds

    relative = f"{name}/{version}/{triton.PYTHON_WHOLE_FILE if python else triton.MODEL_FILE}"
    if not _whole_sequence(run, relative, make, OrtModel):
        return
    inputs = ", ".join(f"{i.name} [{', '.join(['B', *('T' if d is None else str(d) for d in i.shape[1:])])}]"
                       for i in run.loaded.manifest.signature("serving_default").inputs)
    if python:
        run.notes.append(
            f"Triton Python backend, no sequence batcher: model.py runs {triton.PYTHON_WHOLE_FILE} once per request "
            f"of whole sequences ({inputs}); requests are not batched together. Check it on the real server: "
            f"seqexport check triton {run.out_dir}")
        return
    batching = ("dynamic_batching on (batch independence proven): requests batched together must share T, since "
                "Triton concatenates them on the batch dimension" if proven is True and options.max_batch_size > 0
                else f"no dynamic_batching (batch independence not proven: batch_independent is {proven})")
    run.notes.append(
        f"Triton onnxruntime backend, no sequence batcher: one request is whole sequences ({inputs}); {batching}. "
        f"Start it with: {triton.START_COMMAND.format(repo=run.out_dir)}")


def _triton(run: _Run, name: str, version: int, options) -> None:
    def make() -> bytes:
        content = onnx.convert_signature(run.loaded, "step")
        model_path, _ = triton.write_repository(run.out_dir, name=name, version=version, onnx_model=content,
                                                options=options)
        return model_path.read_bytes()

    content = run.convert("step", f"{name}/{version}/{triton.MODEL_FILE}", make)
    if content is None:
        return
    run.check("step", lambda: OrtModel(content))
    run.notes.append(
        f"Triton keeps the state on the server (sequence_batching.state, zero initial state). Start it with: "
        f"{triton.START_COMMAND.format(repo=run.out_dir)}"
    )


def _triton_python(run: _Run, name: str, version: int, options) -> None:
    relative = f"{name}/{version}/{triton.PYTHON_INITIAL_FILE}"
    initial = _initial_model(run, relative, onnx.convert_signature, OrtModel)
    if (run.loaded.manifest.static_inputs or run.loaded.manifest.context_inputs) and initial is None:
        return  # its failed row says why; without it no sequence could start from the static or context inputs
    initial_bytes = None if initial is None else (run.out_dir / relative).read_bytes()

    def make() -> bytes:
        content = onnx.convert_signature(run.loaded, "step")
        manifest = run.loaded.manifest
        step_path, code_path, config_path = triton.write_python_repository(
            run.out_dir, name=name, version=version, onnx_model=content, options=options, initial_model=initial_bytes,
            generate=manifest.generate, feedback_output=manifest.output_keys()[0][0])
        for path in (code_path, config_path):
            relative = path.relative_to(run.out_dir).as_posix()
            run.files.append(ModelFile(path=relative, signature="step", batch=None, size=path.stat().st_size,
                                       seconds=0.0))
        return step_path.read_bytes()

    content = run.convert("step", f"{name}/{version}/{triton.PYTHON_STEP_FILE}", make)
    if content is None:
        return
    run.check("step", lambda: OrtModel(content), initial=initial)
    if initial is not None and run.loaded.manifest.static_inputs:
        run.notes.append(
            f"Static inputs {[i.name for i in run.loaded.manifest.static_inputs]}: an input of every request "
            f"([1, ...]); a sequence's state starts from {triton.PYTHON_INITIAL_FILE} of the START request's values.")
    if initial is not None and run.loaded.manifest.context_inputs:
        run.notes.append(
            f"Context inputs {[i.name for i in run.loaded.manifest.context_inputs]}: inputs of the START request "
            f"only ([1, S, ...]); {triton.PYTHON_INITIAL_FILE} encodes them there into the sequence's first states.")
    if run.loaded.manifest.generate is not None:
        spec = run.loaded.manifest.generate
        run.notes.append(
            f"generate: a request with {triton.GENERATE_INPUT} [1, 1] = N (at most {spec.max_new_tokens}) runs its "
            f"chunk, then N steps fed back {'the argmax id' if spec.feedback.value == 'ids' else 'the output'}, "
            f"greedy, and returns {spec.output_key} [1, N]; the sequence goes on from the state after them.")
    run.notes.append(
        "Triton Python backend: model.py keeps each sequence's state by correlation id (created on START, "
        "dropped on END, after max_sequence_idle_microseconds idle, and past max_sequences live ones); one "
        f"request is one chunk [1, T, F]. Check it on the real server: seqexport check triton {run.out_dir}"
    )


def convert_export(
    export_dir: Path,
    target: str | RuntimeTarget,
    out_dir: Path,
    *,
    tolerance: Tolerance | None = None,
    stream_batch: int | None = None,
    triton_name: str | None = None,
    triton_version: int | None = None,
    triton_options=None,
    loaded=None,
) -> ConversionReport:
    """Converts one export for `target` into `out_dir` and checks it against the goldens.

    Reads `export_dir` only. Writes the model files and `parity.json` into `out_dir`
    (for `triton`, `out_dir` is the model repository and `parity.json` goes in
    `out_dir/NAME/`).

    Args:
        export_dir: an export version folder.
        target: `tflite`, `onnx`, `triton` or `triton-python`.
        out_dir: output folder (created).
        tolerance: of the parity checks; default: the export's own (manifest options).
        stream_batch: `tflite` only: also convert the whole-sequence model for this batch.
        triton_name: `triton*` only: model name in the repository (default: the export's name).
        triton_version: `triton` only: version folder (default: the export's version).
        triton_options: `triton` only: a `triton.TritonOptions`.
        loaded: an already reloaded `graph.LoadedExport` of `export_dir` (saves a reload).

    Returns:
        A `ConversionReport`; `passed` is False when a conversion failed or did not match.

    Raises:
        BadInput: `export_dir` is not a seqexport export, or an unknown target/option.

    Example:
        >>> report = convert_export(Path("models/demo/1"), "onnx", Path("out/onnx"))
        >>> report.passed, [f.path for f in report.files]
        (True, ['step.onnx', 'stream.onnx'])
    """
    started = time.monotonic()
    target = _target(target)
    check_dependencies([target])
    if stream_batch is not None and (target is not RuntimeTarget.TFLITE or stream_batch < 1):
        raise BadInput(f"A stream batch size (got {stream_batch}) is for --to tflite only, and must be positive.")
    loaded = loaded or load_export(Path(export_dir))
    if loaded.manifest.context_inputs and target not in (RuntimeTarget.ONNX, RuntimeTarget.TRITON_PYTHON):
        # ONNX converts the encoder too; Triton's Python backend runs it on each sequence's START request
        why = ("; LiteRT has no kernel for the TensorList ops of the encoder's loop at a dynamic batch"
               if target is RuntimeTarget.TFLITE else "")
        refuse_context_inputs(f"Converting to {target.value}", [i.name for i in loaded.manifest.context_inputs], why)
    if target in TRITON_TARGETS and loaded.manifest.streams:  # LiteRT, ONNX, whole-sequence Triton take them all
        statics = [i.name for i in loaded.manifest.static_inputs] if target is RuntimeTarget.TRITON else []
        refuse_extra_inputs(f"Converting to {target.value}", statics,
                            sequence_inputs=[i.name for i in loaded.manifest.sequence_inputs])
    out_dir = Path(out_dir)
    run = _Run(loaded, target, out_dir, tolerance or loaded.manifest.options.tolerance)
    run.notes.extend(_common_notes(loaded))
    parity_dir = out_dir
    if not loaded.manifest.streams:
        if target in TRITON_TARGETS:
            name = check_name(triton_name or loaded.manifest.name)
            _triton_whole_sequence(run, name, triton_version or triton.version_of(loaded.path),
                                   triton_options or triton.TritonOptions())
            parity_dir = out_dir / name
        elif target is RuntimeTarget.TFLITE:
            batch = _predict_batch(loaded) if stream_batch is None else stream_batch
            _whole_sequence(run, f"serving_default_b{batch}.tflite",
                            lambda: tflite.convert_signature(loaded, "serving_default", batch=batch), LiteRTModel,
                            batch=batch)
        else:
            _whole_sequence(run, "serving_default.onnx", lambda: onnx.convert_signature(loaded, "serving_default"),
                            OrtModel)
        report = run.report(started)
        _write(parity_dir / PARITY_FILE, json.dumps(report.to_json(), indent=2).encode())
        return report
    if target is RuntimeTarget.TFLITE:
        _tflite(run, stream_batch)
    elif target is RuntimeTarget.ONNX:
        _onnx(run)
    else:
        name = check_name(triton_name or loaded.manifest.name)
        version = triton_version or triton.version_of(loaded.path)
        write = _triton if target is RuntimeTarget.TRITON else _triton_python
        write(run, name, version, triton_options or triton.TritonOptions())
        parity_dir = out_dir / name
    report = run.report(started)
    _write(parity_dir / PARITY_FILE, json.dumps(report.to_json(), indent=2).encode())
    return report


def _predict_batch(loaded) -> int:
    """The batch of the golden `serving_default` probe (a whole-sequence LiteRT model is checked at it)."""
    return int(loaded.golden["serving_default/in/inputs"].shape[0])


def convert_in_export(export_dir: Path, targets: tuple[str, ...]) -> tuple[ConversionReport, ...]:
    """`export --targets`: converts into `<export>/assets.extra/seqexport/runtimes/<target>/`.

    Never raises for a failed conversion (the TF export stays valid): a crash of a
    converter becomes a failed row of that target's report.
    """
    export_dir = Path(export_dir)
    loaded = load_export(export_dir)
    reports = []
    for target in targets:
        out_dir = export_dir / SEQEXPORT_DIR / RUNTIMES_DIR / str(target)
        started = time.monotonic()
        try:
            report = convert_export(export_dir, target, out_dir, loaded=loaded)
        except Exception as exc:  # noqa: BLE001  any converter crash is reported, the export stays
            row = failed(str(target), "-", "*", f"conversion crashed: {type(exc).__name__}: {exc}")
            report = ConversionReport(target=str(target), export_dir=".", out_dir=".", files=(), checks=(row,),
                                      seconds=time.monotonic() - started)
        # The version folder is renamed when published: record paths relative to it.
        report = dataclasses.replace(report, export_dir=".", out_dir=str(out_dir.relative_to(export_dir)))
        _write(out_dir / PARITY_FILE, json.dumps(report.to_json(), indent=2).encode())
        reports.append(report)
    return tuple(reports)
