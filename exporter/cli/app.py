"""The `seqexport` command line: thin commands that parse, call one library function, render.

Exit codes: 0 all passed, 1 a check failed, 2 bad input or usage. Every command module
registers itself here; none imports TensorFlow at import time, so `--help` and usage
errors answer fast.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from exporter.artifact.errors import EXIT_CHECK_FAILED
from exporter.artifact.version import VERSION
from exporter.cli import bench, check, convert, export, serve, serving_config, stress
from exporter.cli.render import internal_error, stderr, stdout

app = typer.Typer(
    name="seqexport",
    help="Export stateful sequence models as explicit-state SavedModels, verified in a fresh process.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"seqexport {VERSION}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Export stateful sequence models as explicit-state SavedModels, verified in a fresh process."""


# In the order `--help` lists them: the export commands first, then the others by name.
for _commands in (export, bench, check, convert, serve, serving_config, stress):
    _commands.register(app)


def main() -> None:
    try:
        app()
    except Exception as exc:  # noqa: BLE001  a command that broke outside its own error boundary
        stderr.print(f"[bold red]error:[/] {escape(internal_error(exc))}", soft_wrap=True)
        raise SystemExit(EXIT_CHECK_FAILED) from None


if __name__ == "__main__":
    main()
