"""`seqexport check RUNTIME PATH`: prove an export works where it will be served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from exporter.artifact.errors import EXIT_CHECK_FAILED
from exporter.cli.options import AllRowsOption, JsonOption
from exporter.cli.render import print_checks, stderr, stdout, user_errors
from exporter.cli.report import TimingsLine

check_app = typer.Typer(
    help="Prove an export runs in a serving runtime (its loader, or the real server where one installs).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@check_app.command("tfserving")
def tfserving(
    path: Annotated[Path, typer.Argument(help="A published version folder BASE/NAME/VERSION.")],
    config_dir: Annotated[
        Optional[Path], typer.Option("--config-dir", help="Where serving-config wrote its files (default: BASE).")
    ] = None,
    cache_dir: Annotated[
        Optional[Path], typer.Option("--cache-dir", help="Folder for the compiled C API runner (default: user cache).")
    ] = None,
    as_json: JsonOption = False,
    all_rows: AllRowsOption = False,
) -> None:
    """Load PATH through TensorFlow's C API as TF Serving does; run signatures and warmup; parse configs."""
    with user_errors(as_json):
        with stderr.status("building/loading through the TF C API", spinner="dots"):
            from serving.tfserving.check import check_tfserving  # not for --help

            report = check_tfserving(path, config_dir=config_dir, cache=cache_dir)
    if as_json:
        print(json.dumps({"ok": report.passed, **report.to_json()}, indent=2))
    else:
        print_checks(report.checks, title=f"TF Serving readiness (TF C API {report.tf_version}) of {path}",
                      all_rows=all_rows, per_signature=True)
        stdout.print(("[green]" if report.passed else "[bold red]") + escape(report.summary()), highlight=False)
        if "load" in report.timings:
            stdout.print(f"{report.warmup_records} warmup records replayed", highlight=False)
        stdout.print(TimingsLine(report.timings), highlight=False)
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


@check_app.command("triton")
def triton_check(
    repo: Annotated[Path, typer.Argument(help="A Triton model repository (seqexport convert --to triton).")],
    export: Annotated[
        Optional[Path], typer.Option("--export", help="The export of the goldens (default: from the repository).")
    ] = None,
    model: Annotated[
        Optional[list[str]], typer.Option("--model", help="Check this model only (repeatable; default: all).")
    ] = None,
    as_json: JsonOption = False,
    all_rows: AllRowsOption = False,
) -> None:
    """Load REPO in the real tritonserver (nvidia-pytriton), stream the goldens through it over gRPC and HTTP."""
    with user_errors(as_json):
        with stderr.status("starting tritonserver and streaming the goldens", spinner="dots"):
            from exporter.convert.triton_check import check_repository  # not for --help

            report = check_repository(repo, export=export, names=tuple(model or ()))
    if as_json:
        print(json.dumps({"ok": report.passed, **report.to_json()}, indent=2))
    else:
        print_checks(report.checks, title=f"Triton (tritonserver of nvidia-pytriton {report.server_version}) "
                      f"on {repo}", all_rows=all_rows)
        for note in report.notes:
            stdout.print(f"  [dim]note:[/] {escape(note)}")
        stdout.print(("[green]" if report.passed else "[bold red]") + escape(report.summary()))
        if report.start_seconds is not None:
            stdout.print(f"server live with its models in {report.start_seconds:.2f} s; check {report.seconds:.1f} s")
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def register(app: typer.Typer) -> None:
    app.add_typer(check_app, name="check")
