"""`seqexport bench`: the exported graph against its Keras source, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def bench(
    out: Annotated[Path, typer.Option("--out", help="Folder for bench.json, bench.md and bench.png.")] = Path("bench-out"),
    quick: Annotated[bool, typer.Option("--quick", help="A CI-sized run: B in {1, 4}, T=16, 3 repeats, memory of the LSTM only.")] = False,
    timings: Annotated[bool, typer.Option("--timings/--no-timings", help="Time the signatures against Keras.")] = True,
    export_cost: Annotated[bool, typer.Option("--export-cost/--no-export-cost", help="Time `seqexport export` against "
                                              "Keras's model.export() for LSTM/GRU/SimpleRNN stacks of 64..1024 units "
                                              "(long: about an hour on 2 cores; --quick: one tiny model).")] = True,
) -> None:
    """Time Keras vs the exported signatures (plain and XLA), gradients, peak memory and export cost."""
    from exporter.benchmark import BenchConfig, run_and_write
    from exporter.cli import stderr, stdout
    from exporter.export_cost import ExportCostConfig

    config = (BenchConfig.quick() if quick else BenchConfig()) if timings else None
    cost_config = (ExportCostConfig.quick() if quick else ExportCostConfig()) if export_cost else None
    with stderr.status("benchmark", spinner="dots") as status:
        paths = run_and_write(config, out, progress=lambda p: status.update(f"[bold]{p}[/] ..."),
                              export_cost_config=cost_config)
    stdout.print(paths["markdown"].read_text())
    stdout.print(f"wrote {', '.join(str(p) for p in paths.values())}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
