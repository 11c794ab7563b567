"""What every command shares on screen: the two consoles, the error boundary, the checks table, progress.

One module, so a command prints and fails the same way as every other one; nothing here
imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.markup import escape

from exporter.artifact.errors import EXIT_CHECK_FAILED, SeqExportError
from exporter.cli.report import FOLD_CHECK, FOLD_SIGNATURE, ChecksView

stdout = Console()
stderr = Console(stderr=True)

# The phase the command is in (what `progress_display` last showed): named when something breaks.
_phase = {"now": "starting"}


def internal_error(exc: BaseException) -> str:
    """One line for a bug of ours (never a traceback on screen): the phase, the error, and the file
    its traceback was written to, to report."""
    path = Path(tempfile.gettempdir()) / f"seqexport-internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        path.write_text("".join(traceback.format_exception(exc)))
        where = f"the traceback is in {path}"
    except OSError:
        where = "the traceback could not be written"
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return (f"internal error while {_phase['now']} ({type(exc).__name__}: {first}); {where}; please report it "
            "(with the model, if you can share it)")


@contextlib.contextmanager
def user_errors(as_json: bool):
    """Turns a SeqExportError into a one-paragraph message and its exit code, and anything else (a bug of
    ours) into one line naming the phase and the file its traceback went to, exit 1: never a traceback."""
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise  # typer's own exits and usage errors
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
    except Exception as exc:  # noqa: BLE001  the boundary: no traceback reaches the user
        message = internal_error(exc)
        stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
        if as_json:
            print(json.dumps({"ok": False, "exit_code": EXIT_CHECK_FAILED, "error": message, "internal": True},
                             indent=2))
        raise typer.Exit(EXIT_CHECK_FAILED) from None


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
    _phase["now"] = "starting"

    def shown(phase: str) -> None:
        _phase["now"] = phase
        if stderr.is_terminal:
            status.update(f"[bold]{phase}[/] ...")
        else:
            stderr.print(f"phase: {phase}", highlight=False)

    return status, shown


def notice(message: str) -> None:
    stderr.print(f"[yellow]note:[/] {escape(message)}", soft_wrap=True, highlight=False)
