"""Runtime figures for the demo model: conversion cost, per-step latency vs TF, sequence scaling.

Trains the demo model for a few seconds, exports it into a temporary folder, then
prints the three tables of `exporter.tools.runtime_bench`. Run: `.venv/bin/python scripts/bench_runtimes.py`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402


def _table(title: str, rows: list[dict], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column in ("variant", "target", "file", "signature") else "right")
    for row in rows:
        table.add_row(*(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    return table


def main() -> None:
    from exporter.pipeline import export
    from exporter.tools import runtime_bench as bench
    from exporter.tools.demo import train_demo_model

    console = Console()
    with tempfile.TemporaryDirectory(prefix="seqexport-bench-") as tmp:
        tmp = Path(tmp)
        with console.status("training and exporting the demo model"):
            model_file = train_demo_model(tmp / "demo.keras", seconds=2.0)
            result = export(str(model_file), name="demo", base=tmp / "models")
        with console.status("converting"):
            costs = bench.conversion_costs(result.path, tmp / "runtimes")
        console.print(_table("conversion (demo model)", costs,
                             ["target", "file", "signature", "batch", "kib", "seconds", "parity_passed"]))
        with console.status("timing step drivers"):
            latency = bench.step_latency(result.path)
        console.print(_table("per-step latency, 64-step loop, median of 7 interleaved repeats", latency,
                             ["batch", "variant", "us_per_step", "ratio_vs_tf"]))
        with console.status("timing whole-sequence models"):
            scaling = bench.sequence_scaling(result.path, lengths=(64, 256, 1024))
        console.print(_table("whole sequence vs step loop, batch 32 (us per step)", scaling,
                             ["steps", "variant", "us_per_step"]))


if __name__ == "__main__":
    main()
