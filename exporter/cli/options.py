"""Options several commands take, spelled and documented once."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
AllRowsOption = Annotated[bool, typer.Option("--all", help="Show every row, not the worst per check.")]
VerifyTimeoutOption = Annotated[
    float, typer.Option("--verify-timeout", min=1.0, metavar="SECONDS",
                        help="Stop the fresh-process verification after SECONDS (exit 1, naming the check running).")
]
TOLERANCES = "Tolerances"
