"""`seqexport stress`: load `seqexport serve` on loopback with streaming sessions and bad requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def stress(
    base: Annotated[
        Optional[Path],
        typer.Argument(help="Base folder with NAME/VERSION (default: the demo model, trained and exported first)."),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Model under BASE to serve (its newest version is copied).")] = "demo",
    small: Annotated[bool, typer.Option("--small", help="8 sessions x 20 chunks, memory not judged (for tests).")] = False,
    sessions: Annotated[Optional[int], typer.Option("--sessions", min=1, help="Concurrent sessions (default 64).")] = None,
    chunks: Annotated[Optional[int], typer.Option("--chunks", min=1, help="Chunks per session (default 200).")] = None,
    min_requests: Annotated[
        Optional[int], typer.Option("--min-requests", min=0, help="Keep starting sessions until this many requests (default 20000).")
    ] = None,
    connections: Annotated[
        Optional[int],
        typer.Option("--connections", min=1, help="Connections mode: N REST clients (a connection per request) "
                                                  "and N gRPC channels at once; counts resets and failures."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sequences and of the bad-request mix.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Stream many sessions with 10% bad requests through `seqexport serve`; exit 1 if a property fails."""
    import dataclasses
    import tempfile

    from exporter.cli import _user_errors, stderr, stdout
    from exporter.errors import EXIT_CHECK_FAILED
    from serving.stress import StressConfig, run_stress

    if connections is not None:
        _connections_mode(base, name, connections, min_requests, chunks, seed, as_json)
        return
    with _user_errors(as_json):
        config = StressConfig.small() if small else StressConfig()
        changes = {k: v for k, v in {"sessions": sessions, "chunks": chunks, "min_requests": min_requests}.items()
                   if v is not None}
        config = dataclasses.replace(config, seed=seed, **changes)
        with tempfile.TemporaryDirectory(prefix="seqexport-stress-demo-") as scratch, \
                stderr.status("stress", spinner="dots") as status:
            progress = lambda text: status.update(f"[bold]{text}[/] ...")  # noqa: E731
            if base is None:
                base, name = _demo_base(Path(scratch), progress)
            report = run_stress(base, name, config, progress=progress)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for renderable in _render(report):
            stdout.print(renderable)
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _render(report) -> list:
    from rich.table import Table

    config = report.config
    head = Table(title=f"stress: {config.sessions} sessions x {config.chunks} chunks of {config.chunk_steps} steps, "
                       f"{config.bad_fraction:.0%} bad requests, loopback", show_header=False)
    head.add_column(justify="left")
    head.add_column(justify="right")
    latency = report.latency_ms
    rss = report.rss_mb
    rows = [
        ("requests: good / bad / metadata", f"{report.requests} ({report.good} / {report.bad} / {report.metadata})"),
        ("wall time", f"{report.seconds:.1f} s"),
        ("requests/s", f"{report.requests_per_s:.0f}"),
        ("latency p50 / p99, all", f"{latency['all'].get('p50', 0):.2f} / {latency['all'].get('p99', 0):.2f} ms"),
        ("latency p50 / p99, gRPC", f"{latency['grpc'].get('p50', 0):.2f} / {latency['grpc'].get('p99', 0):.2f} ms"),
        ("latency p50 / p99, REST", f"{latency['rest'].get('p50', 0):.2f} / {latency['rest'].get('p99', 0):.2f} ms"),
        ("sessions checked, by version", f"{report.sessions} {report.sessions_by_version}"),
        ("wrong sessions; max abs, rel error",
         f"{report.wrong_sessions} / {report.max_abs_error:.3g}, {report.max_rel_error:.3g} "
         f"(tolerance {report.tolerance.atol:g} + {report.tolerance.rtol:g}*|want|)"),
        ("dropped good requests", str(report.dropped)),
        ("bad requests with a wrong answer", str(report.unexpected_answers)),
        ("server RSS", f"start {rss.get('start')} MB, after {rss.get('baseline_at')} requests "
                       f"{rss.get('baseline')} MB, once version 2 was loaded (request {rss.get('after_publish_at')}) "
                       f"{rss.get('after_publish')} MB, after {rss.get('at_min_requests_at')} requests "
                       f"{rss.get('at_min_requests')} MB, end {rss.get('end')} MB"),
        ("memory growth", "not measured" if report.memory_growth_mb is None
         else f"{report.memory_growth_mb:+.1f} MB (budget {config.memory_budget_mb:g})"),
        ("new version", f"{report.publish.get('version')} published at request {report.publish.get('at_request')}, "
                        f"served after {report.publish.get('picked_up_s')} s; sessions started after it: "
                        f"{report.publish.get('sessions_started_after')}, on an old version: {report.stale_sessions}"),
    ]
    for label, value in rows:
        head.add_row(label, value)
    codes = Table(title="bad requests: errors by code")
    codes.add_column("transport and answer")
    codes.add_column("count", justify="right")
    for code, count in report.bad_answers.items():
        codes.add_row(code, str(count))
    kinds = Table(title="bad requests by kind")
    for column in ("kind", "expected", "answer", "count"):
        kinds.add_column(column, justify="right" if column == "count" else "left")
    for kind, expected, answer, count in report.bad_by_kind:
        kinds.add_row(kind, expected, answer if answer == expected else f"[bold red]{answer}[/]", str(count))
    checks = Table(title="properties")
    checks.add_column("property")
    checks.add_column("held", justify="right")
    for check, held in report.checks().items():
        checks.add_row(check, {True: "[green]yes[/]", False: "[bold red]NO[/]", None: "not measured"}[held])
    extra = [f"dropped: {line}" for line in report.dropped_examples]
    extra += [f"unexpected: {line}" for line in report.unexpected_examples]
    return [head, codes, kinds, checks, *extra]


def _connections_mode(base, name, connections, requests, chunks, seed, as_json) -> None:
    import dataclasses
    import tempfile

    from exporter.cli import _user_errors, stderr, stdout
    from exporter.errors import EXIT_CHECK_FAILED
    from serving.stress_connections import ConnectionsConfig, run_connections

    with _user_errors(as_json):
        changes = {k: v for k, v in {"requests": requests, "chunks": chunks}.items() if v is not None}
        config = dataclasses.replace(ConnectionsConfig(connections=connections, seed=seed), **changes)
        with tempfile.TemporaryDirectory(prefix="seqexport-stress-demo-") as scratch, \
                stderr.status("stress", spinner="dots") as status:
            progress = lambda text: status.update(f"[bold]{text}[/] ...")  # noqa: E731
            if base is None:
                base, name = _demo_base(Path(scratch), progress)
            report = run_connections(base, name, config, progress=progress)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        stdout.print(_render_connections(report))
        for line in report.examples:
            stdout.print(f"example: {line}")
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _render_connections(report):
    from rich.table import Table

    config = report.config
    table = Table(title=f"stress --connections {config.connections}: {config.connections} REST clients (a connection "
                        f"per request) + {config.connections} gRPC channels, {report.requests} requests, loopback")
    for column in ("transport", "requests", "resets", "failures", "p50 ms", "p99 ms", "requests/s"):
        table.add_column(column, justify="left" if column == "transport" else "right")
    for transport, row in report.transports.items():
        latency = row["latency_ms"]
        table.add_row(transport, str(row["requests"]), str(row["resets"]), str(row["failures"]),
                      f"{latency.get('p50', 0):.2f}", f"{latency.get('p99', 0):.2f}", f"{row['per_s']:.0f}")
    rss = report.rss_mb
    growth = "not measured" if report.memory_growth_mb is None else f"{report.memory_growth_mb:+.1f} MB"
    table.caption = (f"{report.seconds:.1f} s, {report.requests / report.seconds if report.seconds else 0:.0f} req/s; "
                     f"sessions {report.sessions}, wrong {report.wrong_sessions}; server RSS start {rss.get('start')} "
                     f"MB, after {rss.get('baseline_at')} requests {rss.get('baseline')} MB, end {rss.get('end')} MB "
                     f"({growth}); checks: " + ", ".join(f"{k}: {v}" for k, v in report.checks().items()))
    return table


def _demo_base(folder: Path, progress) -> tuple[Path, str]:
    from exporter.demo import train_demo_model
    from exporter.pipeline import export

    progress("training and exporting the demo model")
    model_file = train_demo_model(folder / "demo.keras", seconds=2.0)
    export(str(model_file), name="demo", base=folder / "models")
    return folder / "models", "demo"


def register(app: typer.Typer) -> None:
    app.command("stress")(stress)
