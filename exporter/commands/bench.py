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
    import json

    for table in bench_tables(json.loads(paths["json"].read_text())):
        stdout.print(table)
    stdout.print(f"wrote {', '.join(str(p) for p in paths.values())}", highlight=False)


def bench_tables(results: dict) -> list:
    """`bench.json` as two tables (times per variant and config; peak memory), readable at 80 columns."""
    from rich.markup import escape

    from exporter.report import add_columns, table

    numbers = ("B", "T", "µs/step", "steps/s", "vs keras")
    times = table(title="time per step (medians; ratio vs the Keras call)")
    add_columns(times, ("model", "kind", "B", "T", "variant", "µs/step", "steps/s", "vs keras", "matches"),
                right=numbers, no_wrap=numbers)
    for row in results["timings"]:
        match = "-" if row["matches_keras"] is None else ("yes" if row["matches_keras"] else "[bold red]NO[/]")
        times.add_row(escape(row["model"]), escape(row["kind"]), str(row["batch"]), str(row["steps"]),
                      escape(row["variant"]), f"{row['us_per_step']:.1f}", f"{row['throughput_steps_per_s']:.0f}",
                      f"{row['ratio_vs_keras']:.2f}", match)
    memory = table(title="peak memory of the first call, fresh process")
    add_columns(memory, ("model", "variant", "B", "T", "MB over baseline"), right=("B", "T", "MB over baseline"),
                no_wrap=("B", "T", "MB over baseline"))
    for row in results["memory"]:
        memory.add_row(escape(row["model"]), escape(row["variant"]), str(row["batch"]), str(row["steps"]),
                       f"{row['peak_mb_over_baseline']:.0f}")
    return [times, memory] if results["memory"] else [times]


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
