"""`seqexport stress`: load `seqexport serve` on loopback with streaming sessions and bad requests."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from exporter.artifact.errors import EXIT_CHECK_FAILED
from exporter.cli.render import stderr, stdout, user_errors
from exporter.cli.report import add_columns, compact, key_values, table


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
    if connections is not None:
        _connections_mode(base, name, connections, min_requests, chunks, seed, as_json)
        return
    with user_errors(as_json):
        from exporter.tools.stress import StressConfig, run_stress  # the server and numpy: not for --help

        config = StressConfig.small() if small else StressConfig()
        changes = {k: v for k, v in {"sessions": sessions, "chunks": chunks, "min_requests": min_requests}.items()
                   if v is not None}
        config = dataclasses.replace(config, seed=seed, **changes)
        report = _on_base(base, name, lambda b, n, progress: run_stress(b, n, config, progress=progress))
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for renderable in _render(report):
            stdout.print(renderable)
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _render(report) -> list:
    """The run's figures as `name = value` rows, then the bad requests and the properties."""
    config = report.config
    latency = report.latency_ms
    rss = report.rss_mb

    def p50_p99(transport: str) -> str:
        return f"{latency.get(transport, {}).get('p50', 0):.2f} / {latency.get(transport, {}).get('p99', 0):.2f} ms"

    by_version = ", ".join(f"version {k}: {v}" for k, v in report.sessions_by_version.items())
    publish = report.publish
    rows = [
        ("requests", f"{report.requests} ({report.good} good, {report.bad} bad, {report.metadata} metadata)"),
        ("wall time", f"{report.seconds:.1f} s, {report.requests_per_s:.0f} requests/s"),
        ("latency p50 / p99, all", p50_p99("all")),
        ("latency p50 / p99, gRPC", p50_p99("grpc")),
        ("latency p50 / p99, REST", p50_p99("rest")),
        ("sessions checked", f"{report.sessions} ({by_version})" if by_version else str(report.sessions)),
        ("wrong sessions", str(report.wrong_sessions)),
        ("max abs / rel error", f"{compact(report.max_abs_error)} / {compact(report.max_rel_error)} "
                                f"(tolerance {compact(report.tolerance.atol, 3)} + "
                                f"{compact(report.tolerance.rtol, 3)} * |want|)"),
        ("dropped good requests", str(report.dropped)),
        ("bad requests, wrong answer", str(report.unexpected_answers)),
        *((label, f"{rss[key]} MB") for label, key in (
            ("server RSS at start", "start"),
            (f"RSS after {rss.get('baseline_at')} requests", "baseline"),
            (f"RSS with version {publish.get('version')} (request {rss.get('after_publish_at')})", "after_publish"),
            (f"RSS after {rss.get('at_min_requests_at')} requests", "at_min_requests"),
            ("RSS at the end", "end"),
        ) if rss.get(key) is not None),
        ("memory growth", "not measured" if report.memory_growth_mb is None
         else f"{report.memory_growth_mb:+.1f} MB (budget {config.memory_budget_mb:g} MB)"),
        ("new version", f"{publish.get('version')} published at request {publish.get('at_request')}, "
                        f"served after {publish.get('picked_up_s')} s"),
        ("sessions after it", f"{publish.get('sessions_started_after')}, on an old version: {report.stale_sessions}"),
    ]
    head = key_values(rows, title=f"stress: {config.sessions} sessions x {config.chunks} chunks of "
                                  f"{config.chunk_steps} steps, {config.bad_fraction:.0%} bad, loopback")
    codes = table(title="bad requests by code")
    add_columns(codes, ("transport and answer", "count"), right=("count",), no_wrap=("count",))
    for code, count in report.bad_answers.items():
        codes.add_row(escape(code), str(count))
    kinds = table(title="bad requests by kind")
    add_columns(kinds, ("kind", "expected", "answer", "count"), right=("count",), no_wrap=("count",))
    for kind, expected, answer, count in report.bad_by_kind:
        kinds.add_row(escape(kind), escape(expected),
                      escape(answer) if answer == expected else f"[bold red]{escape(answer)}[/]", str(count))
    checks = table(title="properties")
    add_columns(checks, ("property", "held"), right=("held",), no_wrap=("held",))
    for check, held in report.checks().items():
        checks.add_row(escape(check), {True: "[green]yes[/]", False: "[bold red]NO[/]", None: "not measured"}[held])
    extra = [f"dropped: {escape(line)}" for line in report.dropped_examples]
    extra += [f"unexpected: {escape(line)}" for line in report.unexpected_examples]
    return [head, codes, kinds, checks, *extra]


def _connections_mode(base, name, connections, requests, chunks, seed, as_json) -> None:
    with user_errors(as_json):
        changes = {k: v for k, v in {"requests": requests, "chunks": chunks}.items() if v is not None}
        from exporter.tools.stress_connections import ConnectionsConfig, run_connections  # not for --help

        config = dataclasses.replace(ConnectionsConfig(connections=connections, seed=seed), **changes)
        report = _on_base(base, name, lambda b, n, progress: run_connections(b, n, config, progress=progress))
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        stdout.print(_render_connections(report))
        for line in report.examples:
            stdout.print(f"example: {line}")
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _render_connections(report):
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


def _on_base(base, name: str, run):
    """`run(base, name, progress)` under a spinner; on a freshly trained demo export when no BASE is given."""

    with tempfile.TemporaryDirectory(prefix="seqexport-stress-demo-") as scratch, \
            stderr.status("stress", spinner="dots") as status:
        progress = lambda text: status.update(f"[bold]{text}[/] ...")  # noqa: E731
        if base is None:
            base, name = _demo_base(Path(scratch), progress)
        return run(base, name, progress)


def _demo_base(folder: Path, progress) -> tuple[Path, str]:
    from exporter.pipeline import export

    progress("training and exporting the demo model")
    from exporter.tools.demo import train_demo_model  # Keras: not for --help

    model_file = train_demo_model(folder / "demo.keras", seconds=2.0)
    export(str(model_file), name="demo", base=folder / "models")
    return folder / "models", "demo"


def register(app: typer.Typer) -> None:
    app.command("stress")(stress)
