"""`seqexport bench`: the exported graph against its Keras source, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def bench(
    out: Annotated[Path, typer.Option("--out", help="Folder for bench.json, bench.md and bench.png.")] = Path("bench-out"),
    quick: Annotated[bool, typer.Option("--quick", help="A CI-sized run: B in {1, 4}, T=16, 3 repeats, memory of the LSTM only.")] = False,
) -> None:
    """Time Keras vs the exported signatures (plain and XLA), gradients and peak memory."""
    from exporter.benchmark import BenchConfig, run_and_write
    from exporter.cli import stderr, stdout

    config = BenchConfig.quick() if quick else BenchConfig()
    with stderr.status("benchmark", spinner="dots") as status:
        paths = run_and_write(config, out, progress=lambda p: status.update(f"[bold]{p}[/] ..."))
    stdout.print(paths["markdown"].read_text())
    stdout.print(f"wrote {', '.join(str(p) for p in paths.values())}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
