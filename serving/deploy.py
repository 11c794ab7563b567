"""`docker-compose.yml` and `kubernetes.yaml`: the official `tensorflow/serving` image on BASE.

Both are built as data (no template) and written as YAML with PyYAML's
`safe_dump`, below a comment header saying how they were made. Both run `tensorflow_model_server` itself (not the
image's entrypoint script, which adds `--model_name`/`--model_base_path`) with
exactly the flags that use the files `serving-config` wrote; flag names are
those of tensorflow_serving/model_servers/main.cc.

BASE is mounted read-only at `/models` in the container: the model folders and
the config files beside them.
"""

from __future__ import annotations

import dataclasses
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath

import yaml

CONTAINER_BASE = "/models"
GRPC_PORT = 8500
REST_PORT = 8501
IMAGE_REPOSITORY = "tensorflow/serving"
COMPOSE_FILE = "docker-compose.yml"
KUBERNETES_FILE = "kubernetes.yaml"
SERVER_BINARY = "tensorflow_model_server"
# Flags whose value is a file the server reads at start.
FILE_FLAGS = ("model_config_file", "batching_parameters_file", "monitoring_config_file")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerFiles:
    """Config file names, relative to BASE (None: not written)."""

    models: str
    monitoring: str
    batching: str | None = None
    xla: bool = False  # a served version was exported with --jit


def default_image() -> str:
    """`tensorflow/serving:<version of the installed tensorflow-serving-api>` (released together)."""
    try:
        return f"{IMAGE_REPOSITORY}:{version('tensorflow-serving-api')}"
    except PackageNotFoundError:
        return f"{IMAGE_REPOSITORY}:latest"


def server_flags(files: ServerFiles, *, container_base: str = CONTAINER_BASE) -> list[str]:
    """`tensorflow_model_server` flags that serve BASE with these files."""
    base = PurePosixPath(container_base)
    flags = [
        f"--port={GRPC_PORT}",
        f"--rest_api_port={REST_PORT}",
        f"--model_config_file={base / files.models}",
        f"--monitoring_config_file={base / files.monitoring}",
        # Replays assets.extra/tf_serving_warmup_requests before a version is AVAILABLE.
        "--enable_model_warmup=true",
    ]
    if files.batching is not None:
        flags += ["--enable_batching=true", f"--batching_parameters_file={base / files.batching}"]
    if files.xla:
        # Without it TF Serving refuses to run functions marked for XLA (`--jit` exports).
        flags.append("--xla_cpu_compilation_enabled=true")
    return flags


def parse_flags(flags: list[str]) -> dict[str, str]:
    """`--name=value` flags into {name: value} (what a test or check reads back)."""
    parsed = {}
    for flag in flags:
        if not flag.startswith("--") or "=" not in flag:
            raise ValueError(f"flag {flag!r} is not of the form --name=value")
        name, value = flag[2:].split("=", 1)
        parsed[name] = value
    return parsed


def compose(*, flags: list[str], image: str) -> dict:
    """A Compose file with one service; BASE (the file's folder) mounted at /models."""
    return {
        "services": {
            "tfserving": {
                "image": image,
                "entrypoint": [SERVER_BINARY],
                "command": list(flags),
                "ports": [f"{GRPC_PORT}:{GRPC_PORT}", f"{REST_PORT}:{REST_PORT}"],
                "volumes": [{"type": "bind", "source": ".", "target": CONTAINER_BASE, "read_only": True}],
                "restart": "unless-stopped",
            }
        }
    }


def kubernetes(*, flags: list[str], image: str, app: str, probe_model: str, claim: str) -> dict:
    """A `v1 List` of a Deployment and a Service (gRPC 8500, REST 8501).

    The models and configs come from the PersistentVolumeClaim `claim`, holding
    a copy of BASE. Readiness probes `/v1/models/NAME/metadata`: it answers 200
    only once a version is AVAILABLE (loaded and warmed up), whereas
    `/v1/models/NAME` already answers 200 while a version is LOADING
    (get_model_status_impl.cc reports every state).
    """
    labels = {"app": app}
    container = {
        "name": "tfserving",
        "image": image,
        "command": [SERVER_BINARY],
        "args": list(flags),
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT},
            {"name": "http", "containerPort": REST_PORT},
        ],
        "readinessProbe": {
            "httpGet": {"path": f"/v1/models/{probe_model}/metadata", "port": REST_PORT},
            "initialDelaySeconds": 5,
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "tcpSocket": {"port": GRPC_PORT},
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
        },
        "volumeMounts": [{"name": "models", "mountPath": CONTAINER_BASE, "readOnly": True}],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": app, "labels": labels},
        "spec": {
            "selector": labels,
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": GRPC_PORT, "protocol": "TCP"},
                {"name": "http", "port": REST_PORT, "targetPort": REST_PORT, "protocol": "TCP"},
            ],
        },
    }
    return {"apiVersion": "v1", "kind": "List", "items": [deployment, service]}


def _write_atomically(text: str, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_document(data: dict, path: Path) -> Path:
    """Writes `data` as indented JSON, atomically (the decision record)."""
    return _write_atomically(json.dumps(data, indent=2) + "\n", path)


def yaml_header(flags: list[str], *, tool: str = "seqexport serving-config") -> str:
    """The comment at the top of a deploy file: what wrote it, from what, and how to redo it."""
    try:
        made_by = f"seqexport {version('seqexport')}"
    except PackageNotFoundError:
        made_by = "seqexport"
    files = [PurePosixPath(parse_flags([f])[name]).name for f in flags for name in FILE_FLAGS
             if f.startswith(f"--{name}=")]
    return (f"Written by `{tool}` ({made_by}); regenerate rather than edit.\n"
            f"Runs {SERVER_BINARY} of the official image on the config files beside\n"
            f"this one ({', '.join(files)}), this folder mounted read-only\n"
            f"at {CONTAINER_BASE}; seqexport-serving.json records every choice and its reason.")


def write_yaml(data: dict, path: Path, *, header: str) -> Path:
    """Writes `data` as block-style YAML (PyYAML `safe_dump`, key order kept) below `# header` lines, atomically."""
    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:  # a dict used twice is written twice, not as &id001/*id001
            return True

    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=1 << 16)
    return _write_atomically(comment + body, path)


def container_to_host(container_path: str, base: Path, *, container_base: str = CONTAINER_BASE) -> Path:
    """Where a path inside the container lies on this machine (BASE mounted at `container_base`)."""
    relative = PurePosixPath(container_path).relative_to(container_base)
    return Path(base) / relative
