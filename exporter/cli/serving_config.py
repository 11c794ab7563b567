"""`seqexport serving-config`: TF Serving configs, deploy files and the decision record, into BASE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from exporter.cli.options import JsonOption
from exporter.cli.render import notice, stderr, stdout, user_errors
from exporter.cli.report import key_values
from serving.config import LABEL_SYNTAX, VersionLabels, VersionPolicy
from serving.serving_files import write_serving_config

BATCHING = "Batching"


def serving_config(
    base: Annotated[Path, typer.Argument(help="TF Serving's base path (holds NAME/VERSION folders).")],
    names: Annotated[list[str], typer.Option("--name", help="Model to serve (a folder under BASE); repeatable.")],
    versions: Annotated[
        str, typer.Option("--versions", help="Version policy: latest:N, specific:V1,V2 or all.")
    ] = "latest:1",
    labels: Annotated[
        Optional[list[str]], typer.Option("--label", help=f"Version label {LABEL_SYNTAX}, e.g. demo:stable=1 (repeatable).")
    ] = None,
    batching: Annotated[
        bool,
        typer.Option("--batching/--no-batching", help="Server-side batching (needs proven batch independence).",
                     rich_help_panel=BATCHING),
    ] = True,
    force_batching: Annotated[
        bool,
        typer.Option("--force-batching", help="Batch even without proof of batch independence (recorded).",
                     rich_help_panel=BATCHING),
    ] = False,
    cpus: Annotated[
        int, typer.Option("--cpus", min=1, help="CPU cores of the server (batch threads).", rich_help_panel=BATCHING)
    ] = 4,
    prometheus_path: Annotated[
        str, typer.Option("--prometheus-path", help="URL path of the Prometheus metrics.")
    ] = "/monitoring/prometheus/metrics",
    image: Annotated[
        Optional[str], typer.Option("--image", help="Server image (default: tensorflow/serving matching the API).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write models/batching/monitoring configs, docker-compose.yml and kubernetes.yaml into BASE."""
    with user_errors(as_json):
        version_labels = VersionLabels.parse(labels or [], every_model=names)
        if version_labels.deprecation_note():
            notice(version_labels.deprecation_note())
        result = write_serving_config(
            base, names, policy=VersionPolicy.parse(versions), labels=version_labels.by_model,
            batching=batching, force_batching=force_batching, cpus=cpus, prometheus_path=prometheus_path,
            image=image,
        )
    if as_json:
        print(json.dumps({"ok": True, **result.to_json()}, indent=2))
        return
    for note in result.notes:
        stderr.print(f"[yellow]note:[/] {escape(note)}")
    if result.batching_forced:
        stderr.print("[bold yellow]warning:[/] batching FORCED without proof: " + escape("; ".join(result.unproven)))
    rows = []
    for model in result.models:
        labels_text = ", ".join(f"{k}={v}" for k, v in model.labels.items()) or "no labels"
        rows.append((f"model {model.name}", f"versions {', '.join(map(str, model.versions))} ({model.policy}), "
                                            f"{labels_text}"))
    if result.batching is not None:
        b = result.batching
        rows.append(("batching", f"max_batch_size {b.max_batch_size}, timeout {b.batch_timeout_micros} us, "
                                 f"{b.num_batch_threads} threads, queue {b.max_enqueued_batches} batches, "
                                 f"sizes {', '.join(map(str, b.allowed_batch_sizes))}"))
    else:
        rows.append(("batching", "off"))
    rows.append(("wrote", ", ".join(path.name for path in result.files.values())))
    rows.append(("start with docker", f"docker compose -f {result.files['compose']} up"))
    rows.append(("or kubectl", f"kubectl apply -f {result.files['kubernetes']}"))
    stdout.print(key_values(rows, title=f"TF Serving files in {escape(str(base))}"), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("serving-config")(serving_config)
