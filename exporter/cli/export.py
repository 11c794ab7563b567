"""`seqexport export`, `verify`, `inspect` and `demo`: make, re-check and read an export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from exporter.artifact.errors import EXIT_CHECK_FAILED, BadInput
from exporter.artifact.manifest import read_manifest
from exporter.artifact.paths import SAVED_MODEL_FILE, is_saved_model_dir, manifest_path
from exporter.artifact.specs import DEFAULT_MAX_NEW_TOKENS, Check, ExportOptions, Tolerance
from exporter.cli.convert import print_conversion
from exporter.cli.options import TOLERANCES, AllRowsOption, JsonOption, VerifyTimeoutOption
from exporter.cli.render import notice, print_checks, progress_display, stderr, stdout, user_errors
from exporter.cli.report import TimingsLine, manifest_tables, seconds_text
from exporter.load import import_user_module
from exporter.verification.run import DEFAULT_TIMEOUT_S, verify_in_fresh_process
from serving.serving_files import write_serving_config


def register(app: typer.Typer) -> None:
    for command in (export, verify, inspect, demo):
        app.command()(command)


def _import_modules(modules: list[str]) -> None:
    for module in modules:
        try:
            import_user_module(module)
        except Exception as exc:  # user code: any failure is a bad input
            raise BadInput(f"--import {module!r} failed: {type(exc).__name__}: {exc}") from None


def export(
    model: Annotated[
        str,
        typer.Argument(
            help="A .keras file, a SavedModel directory with a `step` signature, or "
            "package.module:function returning a StepModel (this RUNS that code)."
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Model name: the folder under --base and TF Serving's name.")],
    base: Annotated[Path, typer.Option("--base", help="TF Serving base path; publishes BASE/NAME/VERSION/.")],
    version: Annotated[
        Optional[int], typer.Option("--version", min=1, help="Version to publish (default: next integer).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace --version if it exists, in one atomic swap.")
    ] = False,
    with_input_gradients: Annotated[
        bool, typer.Option("--with-input-gradients", help="Also export the input_gradients signature.")
    ] = False,
    unsafe: Annotated[
        bool, typer.Option("--unsafe", help="Turn Keras safe mode off (runs code in the file; recorded).")
    ] = False,
    jit: Annotated[
        bool, typer.Option("--jit", help="Compile serving_default, stream and step with XLA (gradients stay without).")
    ] = False,
    fused: Annotated[
        bool, typer.Option("--fused/--no-fused", help="Run serving_default and stream of LSTM stacks in TF's fused "
                           "BlockLSTM kernel (the while_loop stays as <name>_unfused signatures).")
    ] = True,
    require_stream: Annotated[
        bool, typer.Option("--require-stream", help="Refuse (exit 2) a model that cannot run step by step, instead of "
                           "exporting it whole-sequence (serving_default only).")
    ] = False,
    max_length: Annotated[
        Optional[int], typer.Option("--max-length", min=2, help="Positions of a causal attention's key/value cache: "
                                    "the longest sequence a session streams (default: the model's fixed input length).")
    ] = None,
    generate: Annotated[
        bool, typer.Option("--generate", help="Export the generate signature for a model whose float output feeds its "
                           "next input (an id model whose output ranges over its input ids gets it anyway).")
    ] = False,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="The most steps one generate call may produce.")
    ] = DEFAULT_MAX_NEW_TOKENS,
    imports: Annotated[
        Optional[list[str]], typer.Option("--import", help="Import MODULE first (registers custom layers; runs its code).")
    ] = None,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="Absolute tolerance of output checks (float32: 1e-5, float64: 1e-10).", rich_help_panel=TOLERANCES)] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="Relative tolerance of output checks (float32: 1e-4, float64: 1e-8).", rich_help_panel=TOLERANCES)] = None,
    grad_atol: Annotated[Optional[float], typer.Option(min=0.0, help="Absolute tolerance of gradient checks (float32: 1e-4, float64: 1e-9).", rich_help_panel=TOLERANCES)] = None,
    grad_rtol: Annotated[Optional[float], typer.Option(min=0.0, help="Relative tolerance of gradient checks (float32: 1e-3, float64: 1e-7).", rich_help_panel=TOLERANCES)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the probe inputs and loss weights.")] = 0,
    check: Annotated[
        Optional[list[Check]], typer.Option("--check", help="Force an optional check on (hvp: Hessian-vector product).")
    ] = None,
    skip: Annotated[Optional[list[Check]], typer.Option("--skip", help="Force an optional check off.")] = None,
    serving: Annotated[
        bool, typer.Option("--serving", help="Also write TF Serving's configs and deploy files into --base (see serving-config).")
    ] = False,
    targets: Annotated[
        str,
        typer.Option("--targets", help="Also convert to these runtimes before publishing, e.g. tflite,onnx "
                     "(results in the version folder; exit 1 if one fails, the TF export is still published)."),
    ] = "",
    verify_timeout: VerifyTimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: JsonOption = False,
    all_rows: AllRowsOption = False,
) -> None:
    """Export MODEL, verify it in a fresh process, publish it only if every check passed."""
    with user_errors(as_json):
        _import_modules(imports or [])
        if set(check or ()) & set(skip or ()):
            raise BadInput("A check cannot be both in --check and --skip.")
        try:
            options = ExportOptions(
                with_input_gradients=with_input_gradients,
                tolerance=_tolerance(atol, rtol, "--atol/--rtol"),
                grad_tolerance=_tolerance(grad_atol, grad_rtol, "--grad-atol/--grad-rtol"),
                check_hvp=True if Check.HVP in (check or ()) else False if Check.HVP in (skip or ()) else None,
                seed=seed,
                unsafe=unsafe,
                jit=jit,
                fused=fused,
                require_stream=require_stream,
                max_length=max_length,
                generate=generate,
                max_new_tokens=max_new_tokens,
                targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
            )
        except ValueError as exc:
            raise BadInput(f"--targets: {exc}") from None
        _run_export(model, name=name, base=base, version=version, options=options, as_json=as_json,
                    all_rows=all_rows, serving=serving, overwrite=overwrite, verify_timeout_s=verify_timeout)


def _tolerance(atol: float | None, rtol: float | None, flags: str):
    if atol is None and rtol is None:
        return None
    if atol is None or rtol is None:
        raise BadInput(f"Give both of {flags}, or neither (then the dtype's defaults apply).")
    return Tolerance(atol=atol, rtol=rtol)


def _run_export(model: str, *, name, base, version, options, as_json: bool, all_rows: bool,
                serving: bool = False, overwrite: bool = False,
                verify_timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    from exporter.pipeline import export as run_export

    status, progress = progress_display()
    with status:
        result = run_export(model, name=name, base=base, version=version, overwrite=overwrite, options=options,
                            progress=progress, notice=notice, verify_timeout_s=verify_timeout_s)
        serving_files = None
        if serving:
            progress("serving-config")
            # Batching only where the export proved batch independence; never forced from here.
            serving_files = write_serving_config(Path(base), [name], batching=result.manifest.batch_independent is True)
    if as_json:
        payload = {"ok": result.conversions_passed, **result.to_json()}
        if serving_files is not None:
            payload["serving"] = serving_files.to_json()
        print(json.dumps(payload, indent=2))
    else:
        verdict = f": {result.report.summary()}" if result.report.passed else ""
        whole = ", whole sequence only" if not result.manifest.streams else ""
        print_checks(result.report.checks, title=f"verification (fresh process) of {name}{whole}{verdict}",
                     all_rows=all_rows)
        if result.conversions:
            for conversion in result.conversions:
                print_conversion(conversion, all_rows=all_rows)
        print_export_summary(result, name=name, base=base, serving_files=serving_files)
    if not result.conversions_passed:
        failed = [c.summary().rstrip(".") for c in result.conversions if not c.passed]
        stderr.print(f"[bold red]error:[/] the TF export was published, but a requested conversion failed: "
                     f"{escape('; '.join(failed))}")
        raise typer.Exit(EXIT_CHECK_FAILED)


def print_export_summary(result, *, name: str, base: Path, serving_files) -> None:
    """After the table (its title says the verdict): the per-check timings, where it went and how long it took."""
    timings = result.timings
    phases = ", ".join(f"{k} {seconds_text(timings[k])}" for k in ("verify", "convert") if timings.get(k))
    stdout.print(TimingsLine(result.report.timings), highlight=False)
    stdout.print(f"[green]{'replaced' if result.replaced else 'published'}[/] {escape(name)} version "
                 f"{result.version} at {escape(str(result.path))} in {seconds_text(timings['total'])} ({phases})",
                 highlight=False)
    if serving_files is None:
        return
    # The serving files on two lines at 80 columns: batching.config listed means batching is on.
    notes = serving_files.notes
    names = [p.name + (f" ({len(notes)} notes)" if k == "record" and notes else "")
             for k, p in serving_files.files.items()]
    off = "; batching off (batch independence not proven)" if serving_files.batching is None else ""
    stdout.print(f"wrote {escape(', '.join(names))} into {escape(str(base))}{off}", highlight=False)
    if notes and "record" not in serving_files.files:
        for note in notes:
            stdout.print(f"note: {escape(note)}", highlight=False)


def _export_dir(path: Path) -> Path:
    if not is_saved_model_dir(path):
        raise BadInput(f"{str(path)!r} is not a SavedModel directory (no {SAVED_MODEL_FILE} in it).")
    return path


def verify(
    path: Annotated[Path, typer.Argument(help="An export version folder (BASE/NAME/VERSION) or any SavedModel.")],
    verify_timeout: VerifyTimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: JsonOption = False,
    all_rows: AllRowsOption = False,
) -> None:
    """Re-run every check on an existing export in a fresh process (read-only)."""
    with user_errors(as_json):
        _export_dir(path)
        status, progress = progress_display()
        with status:
            progress("verify")
            report = verify_in_fresh_process(path, timeout_s=verify_timeout,
                                             progress=lambda check: progress(f"verify: {check}"))
    if as_json:
        print(json.dumps({"ok": report.passed, **report.to_json()}, indent=2))
    else:
        print_checks(report.checks, title=f"verification (fresh process) of {path}", all_rows=all_rows)
        stdout.print(TimingsLine(report.timings), highlight=False)
        stdout.print(("[green]" if report.passed else "[bold red]") + escape(report.summary()), highlight=False)
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def inspect(
    path: Annotated[Path, typer.Argument(help="An export version folder (BASE/NAME/VERSION).")],
    as_json: JsonOption = False,
) -> None:
    """Show signatures, state names and specs, options and the last check results."""
    with user_errors(as_json):
        _export_dir(path)
        if not manifest_path(path).is_file():
            raise BadInput(
                f"{str(path)!r} has no seqexport manifest ({manifest_path(Path('.'))}); it was not "
                "made by seqexport. `seqexport verify` still checks what it can."
            )
        manifest = read_manifest(path)
    if as_json:
        print(json.dumps(manifest.to_json(), indent=2))
        return

    for table in manifest_tables(manifest):
        stdout.print(table)
        stdout.print()
    if manifest.checks:
        print_checks(manifest.checks, title="last checks", all_rows=False)
    if manifest.verify_timings:
        stdout.print(TimingsLine(manifest.verify_timings), highlight=False)
        if manifest.verify_peak_rss_mb:
            stdout.print(f"verifier peak RSS {manifest.verify_peak_rss_mb:.0f} MB", highlight=False)


def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the trained model and the export base.")] = Path("demo-out"),
    seconds: Annotated[float, typer.Option(min=0.5, help="Training time.")] = 4.0,
    as_json: JsonOption = False,
) -> None:
    """Train the built-in stateful LSTM+GRU model for a few seconds, export, verify, write serving files."""
    with user_errors(as_json):
        from exporter.tools.demo import train_demo_model  # Keras: not for --help

        with stderr.status(f"training the demo model for {seconds:.0f} s", spinner="dots"):
            model_file = train_demo_model(out / "demo.keras", seconds=seconds)
        _run_export(str(model_file), name="demo", base=out / "models", version=None,
                    options=ExportOptions(), as_json=as_json, all_rows=False, serving=True)
