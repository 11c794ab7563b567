"""`seqexport serve BASE`: a local server speaking TF Serving's gRPC and REST APIs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from exporter.artifact.errors import BadInput
from exporter.artifact.names import check_name
from exporter.artifact.paths import version_folders
from exporter.cli.render import stderr, stdout, user_errors
from serving.config import LABEL_SYNTAX, VersionLabels
from serving.server.defaults import (
    DEFAULT_GRPC_WORKERS,
    DEFAULT_HOST,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_LOAD_RETRY_INTERVAL_S,
    DEFAULT_MAX_NUM_LOAD_RETRIES,
    DEFAULT_POLL_SECONDS,
    DEFAULT_REST_MAX_CONNECTIONS,
    DEFAULT_REST_WORKERS,
)

LIMITS = "Limits"
LOADING = "Loading"
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def _check_base(base: Path, names: list[str]) -> None:
    for name in names:
        check_name(name)

    if not base.is_dir():
        raise BadInput(f"Base directory {str(base)!r} does not exist or is not a directory.")
    if version_folders(base, loadable=True) and not names:
        raise BadInput(
            f"{str(base)!r} holds version folders itself: it is one model's folder. Serve its parent "
            f"(seqexport serve {base.parent} --name {base.name})."
        )


def serve(
    base: Annotated[Path, typer.Argument(help="Base folder holding one folder per model (BASE/NAME/VERSION).")],
    grpc_port: Annotated[int, typer.Option("--grpc-port", min=0, max=65535, help="gRPC port (0: any free port).")] = 8500,
    rest_port: Annotated[int, typer.Option("--rest-port", min=0, max=65535, help="REST port (0: any free port).")] = 8501,
    host: Annotated[str, typer.Option("--host", help="Address to bind; other than loopback exposes the models.")] = DEFAULT_HOST,
    names: Annotated[Optional[list[str]], typer.Option("--name", help="Serve only this model (repeatable).")] = None,
    versions: Annotated[int, typer.Option("--versions", min=1, help="Serve the newest N versions of each model.")] = 1,
    labels: Annotated[
        Optional[list[str]], typer.Option("--label", help=f"Version label {LABEL_SYNTAX}, e.g. demo:stable=2 (repeatable).")
    ] = None,
    poll_seconds: Annotated[
        float, typer.Option("--poll-seconds", min=0.05, help="How often BASE is scanned for new versions.")
    ] = DEFAULT_POLL_SECONDS,
    max_request_bytes: Annotated[
        int,
        typer.Option("--max-request-bytes", min=1024, rich_help_panel=LIMITS,
                     help="Largest request body (gRPC: RESOURCE_EXHAUSTED, REST: 413)."),
    ] = DEFAULT_MAX_REQUEST_BYTES,
    max_num_load_retries: Annotated[
        int, typer.Option("--max-num-load-retries", min=0, rich_help_panel=LOADING,
                          help="Load tries after a failed one before a version is left failed (TF Serving's flag).")
    ] = DEFAULT_MAX_NUM_LOAD_RETRIES,
    load_retry_interval_seconds: Annotated[
        float, typer.Option("--load-retry-interval-seconds", min=0.0, rich_help_panel=LOADING,
                            help="Seconds between two load tries (TF Serving: --load_retry_interval_micros).")
    ] = DEFAULT_LOAD_RETRY_INTERVAL_S,
    grpc_max_threads: Annotated[
        int, typer.Option("--grpc-max-threads", min=1, rich_help_panel=LIMITS, help="gRPC handler threads.")
    ] = DEFAULT_GRPC_WORKERS,
    rest_api_num_threads: Annotated[
        int, typer.Option("--rest-api-num-threads", min=1, rich_help_panel=LIMITS, help="Threads running REST requests.")
    ] = DEFAULT_REST_WORKERS,
    rest_max_connections: Annotated[
        int, typer.Option("--rest-max-connections", min=1, rich_help_panel=LIMITS,
                          help="REST connections served at once; a request over it gets 503.")
    ] = DEFAULT_REST_MAX_CONNECTIONS,
    tensor_content: Annotated[
        bool, typer.Option("--enable-serialization-as-tensor-content",
                           help="gRPC outputs in tensor_content instead of float_val etc. (TF Serving's flag).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the bound ports as one JSON line.")] = False,
) -> None:
    """Serve every model under BASE over TF Serving's gRPC and REST APIs until Ctrl-C (development use)."""
    with user_errors(as_json):
        _check_base(base, names or [])
        from serving.server.server import ModelServer, ServerOptions  # gRPC, aiohttp: not for --help

        options = ServerOptions(
            base=base, grpc_port=grpc_port, rest_port=rest_port, host=host, names=tuple(names or ()),
            versions=versions, labels=VersionLabels.parse(labels or []).by_model, poll_seconds=poll_seconds,
            max_request_bytes=max_request_bytes, max_num_load_retries=max_num_load_retries,
            load_retry_interval_s=load_retry_interval_seconds, grpc_workers=grpc_max_threads,
            rest_workers=rest_api_num_threads, rest_max_connections=rest_max_connections,
            tensor_content=tensor_content,
        )
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
        server = ModelServer(options)
        try:
            with stderr.status("loading models", spinner="dots"):
                server.start()
        except OSError as exc:
            server.stop()
            raise BadInput(f"Cannot start the server: {exc}. Choose other ports with --grpc-port/--rest-port.") from None
        except KeyboardInterrupt:
            server.stop()
            raise typer.Exit(130) from None
    models = {
        name: [{"version": r.version, "state": r.state.name, "error": r.error} for r in server.registry.status(name)]
        for name in server.registry.model_names()
        if _has_status(server, name)
    }
    if as_json:
        print(json.dumps({"grpc_port": server.grpc_port, "rest_port": server.rest_port, "host": host,
                          "models": models}), flush=True)
    else:
        stdout.print(f"gRPC  {server.grpc_target}\nREST  {server.rest_url}/v1/models/NAME")
        for name, rows in models.items():
            summary = ", ".join(f"{r['version']} {r['state']}" + (f" ({r['error']})" if r["error"] else "") for r in rows)
            stdout.print(f"model {name}: {summary}")
        if not models:
            stdout.print(f"no model under {base} yet; polling every {poll_seconds:g} s")
        stdout.print("Ctrl-C to stop", style="dim")
    if host not in _LOOPBACK:
        stderr.print(f"[yellow]warning:[/] bound to {host}: anyone who can reach it can run the models.")
    server.serve_until_signalled()


def _has_status(server, name: str) -> bool:
    try:
        server.registry.status(name)
        return True
    except Exception:  # noqa: BLE001 - a model folder with no version yet
        return False
