"""`seqexport convert PATH --to tflite|onnx|triton [--backend python] --out DIR`: convert a version, read-only.

Writes the converted models and `parity.json` into DIR (a Triton model repository
for `--to triton`) and prints the parity table. Exit 0 when every parity check
passed, 1 when a conversion failed or did not match, 2 for bad input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from exporter.artifact.errors import EXIT_CHECK_FAILED, BadInput
from exporter.artifact.manifest import read_manifest
from exporter.artifact.specs import RuntimeTarget, Tolerance
from exporter.cli.options import AllRowsOption, JsonOption
from exporter.cli.render import print_checks, stderr, stdout, user_errors
from exporter.cli.report import add_columns, table

TRITON = "Triton"


def print_conversion(report, *, all_rows: bool) -> None:
    """The parity table of one runtime conversion, then its files and notes."""
    print_checks(report.checks, title=f"{report.target} parity vs golden.npz", all_rows=all_rows,
                  per_signature=True)
    files = table(title=f"files in {escape(str(report.out_dir))}")
    add_columns(files, ("file", "from", "batch", "KiB", "converted in"), right=("KiB", "converted in"),
                no_wrap=("KiB", "converted in"))
    for file in report.files:
        files.add_row(escape(file.path), escape(file.signature), "any" if file.batch is None else str(file.batch),
                      f"{file.size / 1024:.1f}", f"{file.seconds:.2f} s")
    if report.files:
        stdout.print(files)
    for note in report.notes:
        stdout.print(f"[dim]note:[/] {escape(note)}", highlight=False)
    stdout.print(("[green]" if report.passed else "[bold red]") + escape(report.summary()), highlight=False)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def convert(
    path: Annotated[Path, typer.Argument(help="An export version folder (BASE/NAME/VERSION); it is only read.")],
    to: Annotated[str, typer.Option("--to", help="Target runtime: tflite, onnx or triton.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (for triton: the model repository).")],
    stream_batch: Annotated[
        Optional[int],
        typer.Option("--stream-batch", min=1, help="tflite: also convert the whole-sequence model at this static batch."),
    ] = None,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="Absolute tolerance (default: the export's).")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="Relative tolerance (default: the export's).")] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="triton: model name in the repository (default: the export's).",
                                    rich_help_panel=TRITON)
    ] = None,
    version: Annotated[
        Optional[int], typer.Option("--version", min=1, help="triton: version folder (default: the export's).",
                                    rich_help_panel=TRITON)
    ] = None,
    backend: Annotated[
        Optional[str], typer.Option("--backend", help="triton: onnxruntime (implicit state, the official container; "
                                    "default) or python (model.py keeps the state).", rich_help_panel=TRITON)
    ] = None,
    max_sequences: Annotated[
        int, typer.Option(min=1, help="triton python: most sequence states model.py keeps.", rich_help_panel=TRITON)
    ] = 1024,
    max_batch_size: Annotated[
        int, typer.Option(min=0, help="triton: sequences per batch (0: no batching).", rich_help_panel=TRITON)
    ] = 8,
    strategy: Annotated[
        str, typer.Option(help="triton: sequence batcher strategy, direct or oldest.", rich_help_panel=TRITON)
    ] = "direct",
    idle_us: Annotated[
        int, typer.Option("--max-sequence-idle-us", min=1, help="triton: end a sequence idle this long.",
                          rich_help_panel=TRITON)
    ] = 60_000_000,
    correlation_id: Annotated[
        bool, typer.Option("--correlation-id/--no-correlation-id",
                           help="triton: declare the CORRID control input (adds an unused uint64 input to the model).",
                           rich_help_panel=TRITON)
    ] = True,
    as_json: JsonOption = False,
    all_rows: AllRowsOption = False,
) -> None:
    """Convert an existing export to LiteRT, ONNX Runtime or a Triton repository, checked against its goldens."""
    from exporter.convert.targets import convert_export  # numpy and the runtimes: not for --help
    from exporter.convert.triton import Strategy, TritonOptions

    with user_errors(as_json):
        if to not in {t.value for t in RuntimeTarget}:
            raise BadInput(f"--to {to!r} is not a target. Choose from: {', '.join(t.value for t in RuntimeTarget)}.")
        if backend is not None:
            if to != RuntimeTarget.TRITON.value or backend not in ("onnxruntime", "python"):
                raise BadInput(f"--backend {backend!r}: use --to triton with --backend onnxruntime or python.")
            if backend == "python":
                to = RuntimeTarget.TRITON_PYTHON.value
        if _inside(out, path):
            raise BadInput(
                f"--out {str(out)!r} is inside the export {str(path)!r}; `convert` never writes into a "
                "published version. Pick a folder outside it (or use `export --targets`)."
            )
        tolerance = None
        if atol is not None or rtol is not None:
            try:
                default = read_manifest(path).options.tolerance
            except (OSError, ValueError, KeyError):
                raise BadInput(f"{str(path)!r} has no readable seqexport manifest.") from None
            tolerance = Tolerance(atol=default.atol if atol is None else atol,
                                  rtol=default.rtol if rtol is None else rtol)
        triton_options = None
        if to in (RuntimeTarget.TRITON.value, RuntimeTarget.TRITON_PYTHON.value):
            try:
                triton_options = TritonOptions(max_batch_size=max_batch_size, strategy=Strategy(strategy),
                                               max_sequence_idle_microseconds=idle_us, correlation_id=correlation_id,
                                               max_sequences=max_sequences)
            except ValueError as exc:
                raise BadInput(f"--strategy must be direct or oldest ({exc}).") from None
        elif name is not None or version is not None:
            raise BadInput("--name and --version are for --to triton only.")

        with stderr.status(f"converting to {to}", spinner="dots"):
            report = convert_export(path, to, out, tolerance=tolerance, stream_batch=stream_batch,
                                    triton_name=name, triton_version=version, triton_options=triton_options)
    if as_json:
        print(json.dumps({"ok": report.passed, **report.to_json()}, indent=2))
    else:
        print_conversion(report, all_rows=all_rows)
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def register(app: typer.Typer) -> None:
    app.command(name="convert")(convert)
