"""export(): load -> step model -> trace -> save (staging) -> golden -> fresh-process verify -> publish."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import platform
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy
import tensorflow as tf

from exporter.artifact import golden_io
from exporter.artifact.errors import BadInput, VerifyFailed, refuse_context_inputs, refuse_extra_inputs
from exporter.artifact.manifest import write_manifest
from exporter.artifact.paths import golden_path
from exporter.artifact.specs import (
    ExportOptions,
    Manifest,
    VerifyReport,
    manifest_format_version,
)
from exporter.artifact.version import VERSION
from exporter.convert.targets import TRITON_TARGETS, check_dependencies, convert_in_export
from exporter.generate import add_generate, plan as plan_generate
from exporter.golden import capture
from exporter.load import load_step_model, source_info
from exporter.publish import staged_version
from exporter.save import save_saved_model
from exporter.trace import trace, will_fuse
from exporter.vocabulary import golden_words, vocabularies_as_assets
from exporter.verification.run import DEFAULT_TIMEOUT_S, verify_in_fresh_process
from exporter.warmup import write_warmup


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What `export` published, with the verification report and phase timings (seconds).

    `conversions` holds one `exporter.convert.targets.ConversionReport` per requested
    target (`ExportOptions.targets`); a failed one does not stop the publish. `cleaned`
    lists the staging folders of dead exports this export removed; `replaced` says
    `--overwrite` swapped out an existing version.
    """

    name: str
    version: int
    path: Path
    manifest: Manifest
    report: VerifyReport
    timings: dict[str, float]
    conversions: tuple = ()
    cleaned: tuple[str, ...] = ()
    replaced: bool = False

    @property
    def conversions_passed(self) -> bool:
        return all(c.passed for c in self.conversions)

    def to_json(self) -> dict:
        data = {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "replaced": self.replaced,
            "cleaned": list(self.cleaned),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "verify": self.report.to_json(),
        }
        if self.conversions:
            data["conversions"] = [c.to_json() for c in self.conversions]
        return data


def _tool_versions() -> dict[str, str]:
    return {
        "seqexport": VERSION,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _noop(_: str) -> None:
    pass


def write_export(
    step_model,
    export_dir: Path,
    *,
    name: str,
    source: dict,
    options: ExportOptions = ExportOptions(),
    progress: Callable[[str], None] = _noop,
    notice: Callable[[str], None] = _noop,
    custom_gradients: bool = True,
) -> Manifest:
    """Traces, captures goldens and saves one export into `export_dir` (not yet verified).

    `custom_gradients=False` builds the broken export a test needs; never in production.
    """
    options = options.resolved(
        dtype=step_model.compute_dtype,
        float_inputs=step_model.differentiable_inputs,
    )
    if step_model.reference_steps:  # the source model takes that many steps only: probe with them
        options = dataclasses.replace(options, probe_steps=step_model.reference_steps)
    # The manifest says what was done: fused only where the model has the kernels for it.
    options = dataclasses.replace(options, fused=will_fuse(step_model, jit=options.jit, fused=options.fused))
    progress("trace")
    # Lookup tables read their vocabulary from a file while traced and saved: the save keeps it in assets/.
    with vocabularies_as_assets(step_model.trackables) as (vocabularies, kept_in_graph):
        for note in kept_in_graph:
            notice(note)
        traced = trace(step_model, with_input_gradients=options.with_input_gradients, jit=options.jit,
                       fused=options.fused)
        generate = plan_generate(step_model, requested=options.generate, max_new_tokens=options.max_new_tokens)
        if generate is not None:
            traced = add_generate(traced, step_model, generate, fused=options.fused)
        progress("golden")
        golden = capture(step_model, traced, options, generate)
        golden.update(golden_words(vocabularies, step_model.trackables))
        progress("save")
        save_saved_model(traced, export_dir, custom_gradients=custom_gradients)
    golden_io.save(golden, golden_path(export_dir))
    manifest = Manifest(
        format_version=manifest_format_version(
            static_inputs=bool(step_model.static_inputs), sequence_inputs=bool(step_model.sequence_inputs),
            fixed_steps_or_masks=(step_model.fixed_steps is not None or not step_model.streams
                                  or any(i.mask or i.steps for i in step_model.sequence_inputs)),
            context_inputs=bool(step_model.context_inputs), key_value_cache=step_model.max_length is not None,
            generate=generate is not None, vocabularies=bool(vocabularies)),
        name=name,
        source=source,
        signatures=traced.specs,
        states=step_model.states,
        masked=step_model.masked,
        last_step_only=step_model.last_step_only,
        outputs=step_model.outputs,
        static_inputs=step_model.static_inputs,
        sequence_inputs=step_model.sequence_inputs,
        context_inputs=step_model.context_inputs,
        mask_pad_value=step_model.mask_pad_value,
        fixed_steps=step_model.fixed_steps,
        max_length=step_model.max_length,
        whole_sequence=step_model.whole_sequence_reason,
        trainable_variables=step_model.variable_names(),
        options=options,
        versions=_tool_versions(),
        generate=generate,
        vocabularies=vocabularies,
    )
    write_manifest(manifest, export_dir)
    write_warmup(export_dir, manifest, golden)  # part of the version: it must exist before publish
    return manifest


def export(
    model_ref,
    *,
    name: str,
    base: Path,
    version: int | None = None,
    overwrite: bool = False,
    options: ExportOptions = ExportOptions(),
    progress: Callable[[str], None] = _noop,
    notice: Callable[[str], None] = _noop,
    verify_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ExportResult:
    """Exports MODEL as `<base>/<name>/<version>/`, published only if every check passed.

    Args:
        model_ref: a `.keras` file, a SavedModel directory with a `step` signature, or
            `package.module:function` returning a `StepModel` (runs that code); or, from
            Python, an in-memory `keras.Model` or `StepModel`.
        name: model name (a folder under `base`, TF Serving's model name).
        base: TF Serving's base path.
        version: version number to publish; default: one more than the highest.
        overwrite: replace `version` if it exists, in one atomic swap.
        options: see `ExportOptions`.
        progress: called with the name of each phase as it starts, and with
            "verify: <check> (<done>/<total> done)" as each check of the verification starts.
        notice: called with each message the user should see as it happens (e.g. the
            staging folder of a dead export that was removed).
        verify_timeout_s: the fresh-process verification is stopped after this many seconds.

    Raises:
        BadInput, UnsupportedModel: exit 2; nothing is published (a full or read-only
            disk included: the message names the path).
        VerifyFailed: exit 1; nothing is published, the report says which check failed.
        VerificationIncomplete: exit 1; the verifier ran past `verify_timeout_s` or crashed.
    """
    if options.targets:
        check_dependencies(options.targets)
    timings: dict[str, float] = {}

    def phase(label: str) -> None:
        progress(label)
        timings[label] = time.monotonic()  # start time; turned into durations below

    base = Path(base)
    phase("load")
    # A bad name or version, a link, a version taken and leftovers of dead exports are
    # dealt with before anything slow; the block publishes only if it ends without raising.
    with staged_version(base, name, version=version, overwrite=overwrite,
                        on_remove=lambda item: notice(str(item))) as staged:
        step_model, kind = _load(model_ref, options)
        for finding in step_model.findings:
            notice(finding)
        if not step_model.streams:
            notice(f"whole-sequence export (serving_default only, no streaming signatures): "
                   f"{step_model.whole_sequence_reason}; --require-stream refuses such a model instead")
        with _disk_errors(staged.path, base):
            source = source_info(model_ref, kind) | {"description": step_model.description}
            manifest = write_export(step_model, staged.path, name=name, source=source, options=options,
                                    progress=phase, notice=notice)
        phase("verify")
        report = verify_in_fresh_process(staged.path, timeout_s=verify_timeout_s,
                                         progress=lambda check: progress(f"verify: {check}"))
        manifest = dataclasses.replace(
            manifest,
            checks=report.checks,
            batch_independent=report.properties.get("batch_independent"),
            batch_offdiag_max=report.properties.get("batch_offdiag_max"),
            verify_timings=report.timings,
            verify_peak_rss_mb=report.peak_rss_mb,
        )
        with _disk_errors(staged.path, base):
            write_manifest(manifest, staged.path)
        if not report.passed:
            raise VerifyFailed(f"Verification failed, nothing was published: {report.summary()}", report)
        conversions = ()
        if options.targets:
            # Runtime conversions: into the staging folder, before publishing.
            phase("convert")
            conversions = convert_in_export(staged.path, options.targets)
            runtime_checks = tuple(c for r in conversions for c in r.checks)
            manifest = dataclasses.replace(manifest, checks=report.checks + runtime_checks)
            with _disk_errors(staged.path, base):
                write_manifest(manifest, staged.path)
        phase("publish")
    phase("done")
    starts = list(timings.items())
    durations = {label: starts[i + 1][1] - start for i, (label, start) in enumerate(starts[:-1])}
    durations["total"] = starts[-1][1] - starts[0][1]
    return ExportResult(name=name, version=staged.version, path=staged.published, manifest=manifest, report=report,
                        timings=durations, conversions=conversions,
                        cleaned=tuple(str(item.path) for item in staged.cleaned), replaced=staged.replaced)


def _load(model_ref, options: ExportOptions):
    step_model, kind = load_step_model(model_ref, unsafe=options.unsafe, fall_back=not options.require_stream,
                                       max_length=options.max_length)
    if options.with_input_gradients and not step_model.differentiable_inputs:
        raise BadInput(
            f"--with-input-gradients needs float inputs; this model takes {step_model.input_dtype} "
            "(token ids have no gradient)."
        )
    names = [getattr(t, "value", t) for t in options.targets]  # RuntimeTarget or its value
    triton = [n for n in names if n in {t.value for t in TRITON_TARGETS}]
    unsupported = [n for n in names if n not in ("onnx", "triton-python")]  # they convert an encoder's
    # `initial_state` too (Triton's Python backend runs it on START)
    if unsupported and step_model.context_inputs:
        refuse_context_inputs(f"--targets {','.join(unsupported)}", [i.name for i in step_model.context_inputs])
    if triton:  # only triton-python is a --targets name: it takes several outputs and static inputs
        refuse_extra_inputs(f"--targets {','.join(triton)}",
                            sequence_inputs=[i.name for i in step_model.sequence_inputs])
    return step_model, kind


# strerror fragments of the errors a full, read-only or forbidden disk raises, as
# OSError or as a TensorFlow error (TF's file writers report them in the message).
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
_DISK_MESSAGES = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                  "Permission denied", "File too large")


@contextlib.contextmanager
def _disk_errors(path: Path, base: Path):
    """Turns a full, read-only or forbidden disk while writing `path` into exit 2 naming it."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            raise
        raise BadInput(_disk_message(path, base, exc.strerror or str(exc), exc.filename)) from None
    except Exception as exc:
        if type(exc).__module__.startswith("tensorflow"):
            text = str(exc)
            for fragment in _DISK_MESSAGES:
                if fragment in text:
                    raise BadInput(_disk_message(path, base, fragment, _first_path(text))) from None
        raise


def _first_path(text: str) -> str | None:
    for token in text.replace(";", " ").split():
        if token.startswith("/"):
            return token
    return None


def _disk_message(path: Path, base: Path, reason: str, filename) -> str:
    where = f" (writing {filename})" if filename else ""
    return (
        f"Cannot write the export into {str(path)!r}: {reason}{where}. Nothing was published and the "
        f"partial export was removed. Free space on the file system holding --base {str(base)!r}, or "
        "choose another --base."
    )
