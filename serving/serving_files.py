"""Everything `seqexport serving-config` writes into BASE, beside the model folders.

Files (all at BASE's top level, never inside a version folder; TF Serving only
looks for versions inside BASE/NAME):
- `models.config`, `monitoring.config` and, when batching is on, `batching.config`;
- `docker-compose.yml` and `kubernetes.yaml` running the official image on them;
- `seqexport-serving.json`: what was decided and why (policy, labels, batching
  values with their reasons, whether batching was forced, the server flags).

Server-side batching concatenates rows of different requests, so it is written
only when every served version's manifest says `batch_independent is True`.
`None` (not checked) counts as not proven. `--force-batching` overrides that, and
the override is recorded in a comment atop `batching.config` and in the JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Mapping
from pathlib import Path

from exporter.artifact.errors import BadInput
from exporter.artifact.manifest import read_manifest
from exporter.artifact.names import check_name
from exporter.artifact.paths import WARMUP_FILE, golden_path, is_saved_model_dir, version_folders
from serving import config as cfg
from serving import deploy

RECORD_FILE = "seqexport-serving.json"
RECORD_FORMAT_VERSION = 1
DEFAULT_CPUS = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServedModel:
    """One model as configured: its policy's versions now on disk, and labels."""

    name: str
    base_path: str
    policy: str
    versions: tuple[int, ...]
    labels: dict[str, int]
    batch_independent: dict[int, bool | None]

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {
            "versions": list(self.versions),
            "batch_independent": {str(k): v for k, v in self.batch_independent.items()},
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServingConfigResult:
    """What `write_serving_config` wrote and decided."""

    base: Path
    models: tuple[ServedModel, ...]
    files: dict[str, Path]
    flags: tuple[str, ...]
    image: str
    batching: cfg.BatchingChoice | None
    batching_forced: bool
    unproven: tuple[str, ...]
    notes: tuple[str, ...]
    seconds: float

    def to_json(self) -> dict:
        return {
            "base": str(self.base),
            "models": [m.to_json() for m in self.models],
            "files": {k: str(v) for k, v in self.files.items()},
            "flags": list(self.flags),
            "image": self.image,
            "batching": None if self.batching is None else self.batching.to_json(),
            "batching_forced": self.batching_forced,
            "unproven": list(self.unproven),
            "notes": list(self.notes),
            "seconds": round(self.seconds, 4),
        }


def parameter_count(version_dir: Path) -> int:
    """Trainable parameters of an export, counted from the `var/<i>` arrays of its goldens."""
    from exporter.artifact import golden_io  # numpy: only when sizing, not for the CLI's --help

    path = golden_path(version_dir)
    try:
        return int(sum(array.size for key, array in golden_io.load(path).items() if key.startswith("var/")))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path} is unreadable ({exc}); cannot size the batches.") from None


def _app_name(names: list[str]) -> str:
    """A DNS-1123 label for Kubernetes objects."""
    label = re.sub(r"[^a-z0-9-]+", "-", "tfserving-" + "-".join(names).lower()).strip("-")
    return label[:63].rstrip("-")


def _served_model(base: Path, name: str, policy: cfg.VersionPolicy, labels: dict[str, int],
                  container_base: str, manifest_of) -> ServedModel:
    check_name(name)
    available = sorted(version_folders(base / name))
    if not available:
        raise BadInput(f"{base / name} has no published version (a numbered folder); export {name!r} first.")
    if policy.kind is cfg.PolicyKind.SPECIFIC:
        absent = [v for v in policy.versions if v not in available]
        if absent:
            raise BadInput(f"--versions {policy.describe()}: {name!r} has no version {absent} (has {available}).")
    served = policy.served(available)
    for label, version in labels.items():
        if version not in served:
            raise BadInput(
                f"--label {label}={version}: version {version} of {name!r} is not served by --versions "
                f"{policy.describe()} (serves {served}); TF Serving refuses labels on versions it has not loaded."
            )
    return ServedModel(
        name=name,
        base_path=f"{container_base.rstrip('/')}/{name}",
        policy=policy.describe(),
        versions=tuple(served),
        labels=dict(labels),
        batch_independent={v: manifest_of(name, v).batch_independent for v in served},
    )


def _batching_problems(models: list[ServedModel], manifest_of) -> list[str]:
    problems = []
    for model in models:
        for version, proven in model.batch_independent.items():
            if proven is True:
                continue
            if proven is None:
                problems.append(f"{model.name} version {version}: batch independence was never checked "
                                "(manifest batch_independent is null)")
            else:
                offdiag = manifest_of(model.name, version).batch_offdiag_max
                problems.append(f"{model.name} version {version}: NOT batch independent (largest off-diagonal "
                                f"Jacobian entry {offdiag}); batching would mix rows of different requests")
    return problems


def _scalar_input_signatures(models: list[ServedModel], manifest_of) -> list[str]:
    found = []
    for model in models:
        manifest = manifest_of(model.name, model.versions[-1])
        for sig in manifest.signatures:
            scalars = [t.name for t in sig.inputs if len(t.shape) == 0]
            if scalars:
                found.append(f"{model.name}:{sig.name} ({', '.join(scalars)})")
    return found


def write_serving_config(
    base: Path,
    names: list[str],
    *,
    policy: cfg.VersionPolicy = cfg.VersionPolicy(),
    labels: Mapping[str, Mapping[str, int]] | None = None,
    batching: bool = True,
    force_batching: bool = False,
    cpus: int = DEFAULT_CPUS,
    prometheus_path: str = cfg.DEFAULT_PROMETHEUS_PATH,
    image: str | None = None,
    container_base: str = deploy.CONTAINER_BASE,
) -> ServingConfigResult:
    """Writes TF Serving's configs, deploy files and the decision record into `base`.

    Args:
        base: TF Serving's base path (holds NAME/VERSION folders).
        names: models to serve (folders under `base`).
        policy: version policy, the same for every model.
        labels: version labels per model, e.g. `{"demo": {"stable": 1}}` (`cfg.VersionLabels.by_model`).
        batching: write `batching.config` and turn batching on (needs proof, see module doc).
        force_batching: turn it on without proof; recorded.
        cpus: cores of the server: `num_batch_threads`.
        prometheus_path: URL path of the metrics.
        image: container image; default the official one matching tensorflow-serving-api.
        container_base: where `base` is mounted in the container.

    Raises:
        BadInput: nothing to serve, bad policy/labels, or batching not proven and not forced (exit 2);
            nothing is written then.
    """
    started = time.monotonic()
    base = Path(base)
    if not base.is_dir():
        raise BadInput(f"{str(base)!r} is not a folder: give TF Serving's base path (it holds NAME/VERSION).")
    if any(is_saved_model_dir(p) for p in (base.resolve(), *base.resolve().parents)):
        raise BadInput(f"{base} is inside a version folder; give the base path (two levels up), the config "
                       "files never go into a version.")
    if not names:
        raise BadInput("Give at least one --name.")
    if len(set(names)) != len(names):
        raise BadInput(f"--name repeats a model: {names}")
    if cpus < 1:
        raise BadInput(f"--cpus must be positive. Got: {cpus}")
    labels = labels or {}
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise BadInput(f"--label names model(s) {unknown} that are not served (--name {', '.join(names)}).")
    # Each served version's manifest is read once, here, whatever asks for it below.
    manifest_of = functools.cache(lambda model, version: read_manifest(base / model / str(version)))
    models = [_served_model(base, name, policy, labels.get(name, {}), container_base, manifest_of) for name in names]

    notes: list[str] = []
    choice, unproven = None, []
    if batching:
        unproven = _batching_problems(models, manifest_of)
        if unproven and not force_batching:
            raise BadInput(
                "Server-side batching is not proven safe: " + "; ".join(unproven) + ". Pass --no-batching, "
                "or --force-batching to accept the risk (recorded in batching.config and " + RECORD_FILE + ")."
            )
        count = max(parameter_count(base / m.name / str(m.versions[-1])) for m in models)
        choice = cfg.BatchingChoice.from_model(parameter_count=count, threads=cpus)
        scalars = _scalar_input_signatures(models, manifest_of)
        if scalars:
            notes.append(
                "With --enable_batching TF Serving rejects every call of a signature with a scalar input "
                f"('Batching Run() input tensors must have at least one dimension'): {'; '.join(scalars)}. "
                "seqexport's clients (serving/client.py) build the zero state from the stream signature instead; "
                "other clients must do the same."
            )
        notes.append("With batching, concurrent `stream`/`serving_default` requests must share the chunk length "
                     "(TF Serving concatenates on dimension 0 and fails a batch whose other dimensions differ).")
    for model in models:
        for version in model.versions:
            if not (base / model.name / str(version) / WARMUP_FILE).is_file():
                notes.append(f"{model.name} version {version} has no {WARMUP_FILE} (exported before warmup "
                             "records existed): it starts cold.")

    xla = any(manifest_of(m.name, v).options.jit for m in models for v in m.versions)
    files = deploy.ServerFiles(
        models=cfg.MODELS_CONFIG,
        monitoring=cfg.MONITORING_CONFIG,
        batching=cfg.BATCHING_CONFIG if choice is not None else None,
        xla=xla,
    )
    flags = deploy.server_flags(files, container_base=container_base)
    image = image or deploy.default_image()
    written: dict[str, Path] = {}
    entries = [cfg.ModelEntry(name=m.name, base_path=m.base_path, policy=policy, labels=m.labels) for m in models]
    written["models"] = cfg.write_text(
        cfg.model_server_config(entries), base / cfg.MODELS_CONFIG,
        header="Written by `seqexport serving-config`; read by tensorflow_model_server --model_config_file.\n"
               "Regenerate rather than edit: seqexport-serving.json records the choices.",
    )
    batching_path = base / cfg.BATCHING_CONFIG
    if choice is not None:
        header = "Written by `seqexport serving-config`; read by --batching_parameters_file.\n"
        header += "\n".join(f"{k}: {v}" for k, v in choice.reasons.items())
        if unproven:
            header = ("FORCED with --force-batching: batch independence NOT proven for:\n"
                      + "\n".join(unproven) + "\n" + header)
        written["batching"] = cfg.write_text(choice.to_proto(), batching_path, header=header)
    elif batching_path.exists():
        batching_path.unlink()
        notes.append(f"Removed the old {cfg.BATCHING_CONFIG}: batching is off.")
    written["monitoring"] = cfg.write_text(
        cfg.monitoring_config(prometheus_path), base / cfg.MONITORING_CONFIG,
        header=f"Written by `seqexport serving-config`; Prometheus metrics at http://HOST:{deploy.REST_PORT}"
               f"{prometheus_path}",
    )
    app = _app_name(names)
    header = deploy.yaml_header(flags)
    written["compose"] = deploy.write_yaml(deploy.compose(flags=flags, image=image), base / deploy.COMPOSE_FILE,
                                           header=header + "\nStart: docker compose -f docker-compose.yml up")
    written["kubernetes"] = deploy.write_yaml(
        deploy.kubernetes(flags=flags, image=image, app=app, probe_model=names[0], claim=f"{app}-models"),
        base / deploy.KUBERNETES_FILE,
        header=header + f"\nNeeds the PersistentVolumeClaim {app}-models holding a copy of this folder.\n"
                        "Start: kubectl apply -f kubernetes.yaml",
    )
    result = ServingConfigResult(
        base=base, models=tuple(models), files=written, flags=tuple(flags), image=image, batching=choice,
        batching_forced=bool(unproven), unproven=tuple(unproven), notes=tuple(notes),
        seconds=time.monotonic() - started,
    )
    record = {"format_version": RECORD_FORMAT_VERSION, **result.to_json()}
    record["files"] = {k: v.name for k, v in written.items()}
    record.pop("seconds")
    record.pop("base")
    deploy.write_document(record, base / RECORD_FILE)
    return dataclasses.replace(result, files=written | {"record": base / RECORD_FILE})
