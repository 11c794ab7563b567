"""What every command shares on screen: the two consoles, the error boundary, the checks table, progress.

One module, so a command prints and fails the same way as every other one; nothing here
imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import json

import typer
from rich.console import Console
from rich.markup import escape

from exporter.artifact.errors import SeqExportError
from exporter.cli.report import FOLD_CHECK, FOLD_SIGNATURE, ChecksView

stdout = Console()
stderr = Console(stderr=True)


@contextlib.contextmanager
def user_errors(as_json: bool):
    """Turns a SeqExportError into a one-paragraph message and its exit code (no traceback)."""
    try:
        yield
    except SeqExportError as exc:
        report = getattr(exc, "report", None)
        if report is not None and not as_json:
            print_checks(report.checks, title=f"verification of {report.export_dir}", all_rows=False)
        stderr.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        if as_json:
            payload = {"ok": False, "exit_code": exc.exit_code, "error": str(exc)}
            if report is not None:
                payload["verify"] = report.to_json()
            print(json.dumps(payload, indent=2))
        raise typer.Exit(exc.exit_code) from None


def print_checks(checks, *, title: str, all_rows: bool, per_signature: bool = False) -> None:
    """The checks table (passing rows folded per check, or per check and signature)."""
    stdout.print(ChecksView(checks, title=title, all_rows=all_rows,
                            fold_by=FOLD_SIGNATURE if per_signature else FOLD_CHECK))


def progress_display():
    """A spinner on stderr naming the phase; returns (context manager, callback).

    Where stderr is not a terminal (a log, a pipe) the spinner shows nothing, so
    each phase is written there as a line instead: a log then says where a
    stopped or killed export was.
    """
    status = stderr.status("starting", spinner="dots")
    if not stderr.is_terminal:
        return status, lambda phase: stderr.print(f"phase: {phase}", highlight=False)
    return status, lambda phase: status.update(f"[bold]{phase}[/] ...")


def notice(message: str) -> None:
    stderr.print(f"[yellow]note:[/] {escape(message)}", soft_wrap=True, highlight=False)
