"""`seqexport bench`: the exported graph against its Keras source, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from exporter.cli.render import stderr, stdout
from exporter.cli.report import add_columns, table


def bench(
    out: Annotated[Path, typer.Option("--out", help="Folder for bench.json, bench.md and bench.png.")] = Path("bench-out"),
    quick: Annotated[bool, typer.Option("--quick", help="A CI-sized run: B in {1, 4}, T=16, 3 repeats, memory of the LSTM only.")] = False,
    timings: Annotated[bool, typer.Option("--timings/--no-timings", help="Time the signatures against Keras.")] = True,
    export_cost: Annotated[bool, typer.Option("--export-cost/--no-export-cost", help="Time `seqexport export` against "
                                              "Keras's model.export() for LSTM/GRU/SimpleRNN stacks of 64..1024 units "
                                              "(long: about an hour on 2 cores; --quick: one tiny model).")] = True,
    kv_cache: Annotated[bool, typer.Option("--kv-cache/--no-kv-cache", help="Time generating N positions one `step` "
                                           "at a time on a causal transformer's key/value cache against re-running "
                                           "the growing prefix (N = 128, 512; --quick: 32).")] = False,
    beam: Annotated[bool, typer.Option("--beam/--no-beam", help="Chunks/s and keys/s of serving.beam.StreamSessions "
                                       "at 100..10,000 keys vs the session client over gRPC (needs the beam extra).")] = False,
    generate: Annotated[bool, typer.Option("--generate/--no-generate", help="Time generate in one gRPC request against "
                                           "a client loop of step requests and a Python loop over Keras (B=1, 8; 64 "
                                           "new tokens).")] = False,
) -> None:
    """Time Keras vs the exported signatures (plain and XLA), gradients, peak memory, export cost; on request the
    kv cache, Apache Beam and generate."""
    from exporter.tools.benchmark import BenchConfig, run_and_write  # numpy, TensorFlow: not for --help
    from exporter.tools.cache_bench import CacheBenchConfig
    from exporter.tools.export_cost import ExportCostConfig

    config = (BenchConfig.quick() if quick else BenchConfig()) if timings else None
    cost_config = (ExportCostConfig.quick() if quick else ExportCostConfig()) if export_cost else None
    cache_config = (CacheBenchConfig.quick() if quick else CacheBenchConfig()) if kv_cache else None
    beam_config = None
    if beam:
        from exporter.tools.beam_bench import BeamBenchConfig

        beam_config = BeamBenchConfig.quick() if quick else BeamBenchConfig()
    if any(c is not None for c in (config, cost_config, cache_config, beam_config)):
        with stderr.status("benchmark", spinner="dots") as status:
            paths = run_and_write(config, out, progress=lambda p: status.update(f"[bold]{p}[/] ..."),
                                  export_cost_config=cost_config, cache_config=cache_config, beam_config=beam_config)
        for section in bench_tables(json.loads(paths["json"].read_text())):
            stdout.print(section)
        stdout.print(f"wrote {', '.join(str(p) for p in paths.values())}", highlight=False)
    if generate:
        from exporter.tools.generate_bench import run_in_temp

        with stderr.status("generate benchmark", spinner="dots") as status:
            results = run_in_temp(progress=lambda p: status.update(f"[bold]{p}[/] ..."))
        out.mkdir(parents=True, exist_ok=True)
        (out / "generate.json").write_text(json.dumps(results, indent=2))
        stdout.print(generate_table(results))
        stdout.print(f"wrote {out / 'generate.json'}", highlight=False)


def generate_table(results: dict):
    """`generate.json` as a table: tokens/s of each variant, and generate's speed-up over each loop."""
    numbers = ("B", "generate tok/s", "step loop tok/s", "keras loop tok/s", "x step loop", "x keras")
    rows = table(title=f"generate, 64 new tokens: one gRPC request vs loops ({results['model']})")
    add_columns(rows, (*numbers, "same ids"), right=numbers, no_wrap=numbers)
    for row in results["rows"]:
        rate = row["tokens_per_s"]
        rows.add_row(str(row["batch"]), f"{rate['generate']:.0f}", f"{rate['step loop']:.0f}",
                     f"{rate['keras loop']:.0f}", f"{row['vs_step_loop']:.1f}", f"{row['vs_keras_loop']:.1f}",
                     "yes" if row["ids_agree"] else "[bold red]NO[/]")
    return rows


def bench_tables(results: dict) -> list:
    """`bench.json` as tables (times per variant and config; the targets; peak memory; export cost), readable at
    80 columns."""
    from exporter.tools.export_cost import growth

    tables = []
    if results.get("export_cost"):
        cost = table(title="export cost: seqexport export (verification included) vs Keras model.export()")
        numbers = ("params", "keras s", "seqexport s", "ratio", "growth", "peak MB")
        add_columns(cost, ("model", *numbers), right=numbers, no_wrap=numbers)
        rows = results["export_cost"]
        for row in rows:
            g = growth(row, rows)
            cost.add_row(escape(f"{row['kind']}({row['units']}) x {row['layers']}"), f"{row['params']:,}",
                         f"{row['keras_export_s']:.1f}", f"{row['seqexport_s']:.1f}", f"{row['ratio_vs_keras']:.1f}",
                         "-" if g is None else f"{g:.2f}", f"{row['verify_peak_rss_mb']:.0f}")
        tables.append(cost)
    if results.get("kv_cache"):
        cache = table(title="kv cache, B=1: N positions by `step` vs re-running the growing prefix (medians)")
        numbers = ("N", "step s", "serving_default s", "keras s", "vs serving_default", "vs keras", "cache bytes")
        add_columns(cache, numbers, right=numbers, no_wrap=numbers)
        for row in results["kv_cache"]:
            cache.add_row(str(row["positions"]), f"{row['step_s']:.2f}", f"{row['serving_default_prefix_s']:.2f}",
                          f"{row['keras_prefix_s']:.2f}", f"{row['ratio_vs_serving_default']:.3f}",
                          f"{row['ratio_vs_keras']:.3f}", f"{row['cache_bytes_per_sequence']:,}")
        tables.append(cache)
    if results.get("beam"):
        tables.append(_beam_table(results["beam"]))
    if not results.get("timings"):
        return tables

    numbers = ("B", "T", "µs/step", "steps/s", "vs keras")
    times = table(title="time per step (medians; ratio vs the Keras call)")
    add_columns(times, ("model", "kind", "B", "T", "variant", "µs/step", "steps/s", "vs keras", "matches"),
                right=numbers, no_wrap=numbers)
    for row in results["timings"]:
        match = "-" if row["matches_keras"] is None else ("yes" if row["matches_keras"] else "[bold red]NO[/]")
        times.add_row(escape(row["model"]), escape(row["kind"]), str(row["batch"]), str(row["steps"]),
                      escape(row["variant"]), f"{row['us_per_step']:.1f}", f"{row['throughput_steps_per_s']:.0f}",
                      f"{row['ratio_vs_keras']:.2f}", match)
    targets = results.get("targets", [])
    held = table(title=f"targets: {sum(t['holds'] for t in targets)} of {len(targets)} hold")
    add_columns(held, ("model", "B", "T", "target", "measured", "limit", "holds"),
                right=("B", "T", "measured", "limit"), no_wrap=("B", "T", "measured", "limit"))
    for row in targets:
        held.add_row(escape(row["model"]), str(row["batch"]), str(row["steps"]), escape(row["target"]),
                     f"{row['measured']:.3f}", f"{row['limit']:.2f}", "yes" if row["holds"] else "[bold red]no[/]")
    memory = table(title="peak memory of the first call, fresh process")
    add_columns(memory, ("model", "variant", "B", "T", "MB over baseline"), right=("B", "T", "MB over baseline"),
                no_wrap=("B", "T", "MB over baseline"))
    for row in results["memory"]:
        memory.add_row(escape(row["model"]), escape(row["variant"]), str(row["batch"]), str(row["steps"]),
                       f"{row['peak_mb_over_baseline']:.0f}")
    return [times, *([held] if targets else []), *([memory] if results["memory"] else []), *tables]


def _beam_table(rows: list[dict]):
    """StreamSessions on the in-process runner vs the session client over gRPC (medians)."""
    beam = table(title="serving.beam.StreamSessions (in-process runner) vs StreamingSession over gRPC, per chunk")
    numbers = ("keys", "chunks", "state MB", "beam chunks/s", "beam keys/s", "client chunks/s", "vs client",
               "beam s/10k chunks", "client s/10k chunks")
    add_columns(beam, numbers, right=numbers, no_wrap=numbers)
    for row in rows:
        beam.add_row(f"{row['keys']:,}", f"{row['chunks']:,}", f"{row['state_mb']:.2f}",
                     f"{row['beam_chunks_per_s']:.0f}", f"{row['beam_keys_per_s']:.0f}",
                     f"{row['client_chunks_per_s']:.0f}", f"{row['ratio_vs_client']:.2f}",
                     f"{row['beam_s_per_10k_chunks']:.1f}", f"{row['client_s_per_10k_chunks']:.1f}")
    return beam


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
