"""TF Serving's config files, filled as messages and written with `text_format`.

- `models.config`: `tensorflow_serving.config.model_server_config_pb2.ModelServerConfig`
  (`--model_config_file`), one `ModelConfig` per model;
- `batching.config`: `BatchingParameters` (`--batching_parameters_file`);
- `monitoring.config`: `MonitoringConfig` (`--monitoring_config_file`).
The last two come from `serving.protos` (same schema as TF Serving's, which
`tensorflow-serving-api` does not ship). Never format these files as strings:
`text_format` escapes names and paths and the parse-back tests hold it to that.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format

from exporter.artifact.errors import BadInput, SeqExportError
from exporter.artifact.names import check_name
from serving.protos import monitoring_config_pb2, session_bundle_config_pb2

MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching.config"
MONITORING_CONFIG = "monitoring.config"
# TF Serving's own default (PrometheusExporter::kPrometheusPath).
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

# Batching choice (see `BatchingChoice.from_model`).
BATCH_FLOP_BUDGET = 2**24
MIN_MAX_BATCH_SIZE = 8
MAX_MAX_BATCH_SIZE = 128
BATCH_TIMEOUT_MICROS = 1000
ENQUEUED_BATCHES_PER_THREAD = 2

_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


class ConfigError(SeqExportError):
    """A config file does not parse into its TF Serving message (exit 1: the server would not start)."""

    exit_code = 1


class PolicyKind(str, enum.Enum):
    LATEST = "latest"
    SPECIFIC = "specific"
    ALL = "all"


@dataclasses.dataclass(frozen=True, kw_only=True)
class VersionPolicy:
    """Which versions TF Serving serves (`ServableVersionPolicy`).

    Attributes:
        kind: latest N, a specific list, or all.
        num_versions: N, for `latest`.
        versions: the list, for `specific`.
    """

    kind: PolicyKind = PolicyKind.LATEST
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind is PolicyKind.LATEST and self.num_versions < 1:
            raise ValueError(f"`num_versions` must be positive. Got: {self.num_versions}")
        if self.kind is PolicyKind.SPECIFIC and (not self.versions or min(self.versions) < 1):
            raise ValueError(f"`versions` must be positive version numbers. Got: {self.versions}")

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        """`latest`, `latest:N`, `specific:1,2` or `all`."""
        kind, _, arg = text.strip().partition(":")
        try:
            if kind == PolicyKind.LATEST.value:
                return cls(kind=PolicyKind.LATEST, num_versions=int(arg) if arg else 1)
            if kind == PolicyKind.SPECIFIC.value:
                return cls(kind=PolicyKind.SPECIFIC, versions=tuple(sorted({int(v) for v in arg.split(",")})))
            if kind == PolicyKind.ALL.value and not arg:
                return cls(kind=PolicyKind.ALL)
        except ValueError:
            pass
        raise BadInput(f"--versions {text!r}: use latest:N, specific:V1,V2,... or all (N, V positive integers).")

    def served(self, available: list[int]) -> list[int]:
        """The versions TF Serving would serve out of `available` (on disk)."""
        available = sorted(available)
        if self.kind is PolicyKind.LATEST:
            return available[-self.num_versions:]
        if self.kind is PolicyKind.SPECIFIC:
            return [v for v in self.versions if v in available]
        return available

    def to_proto(self):
        from tensorflow_serving.config import file_system_storage_path_source_pb2 as fs

        policy = fs.FileSystemStoragePathSourceConfig.ServableVersionPolicy()
        if self.kind is PolicyKind.LATEST:
            policy.latest.num_versions = self.num_versions
        elif self.kind is PolicyKind.SPECIFIC:
            policy.specific.versions.extend(self.versions)
        else:
            policy.all.SetInParent()
        return policy

    @classmethod
    def from_proto(cls, policy) -> "VersionPolicy":
        """From a `ServableVersionPolicy`; unset means TF Serving's default, the latest version."""
        which = policy.WhichOneof("policy_choice")
        if which == "specific":
            return cls(kind=PolicyKind.SPECIFIC, versions=tuple(sorted(set(policy.specific.versions))))
        if which == "all":
            return cls(kind=PolicyKind.ALL)
        return cls(kind=PolicyKind.LATEST, num_versions=policy.latest.num_versions or 1)

    def describe(self) -> str:
        if self.kind is PolicyKind.LATEST:
            return f"latest:{self.num_versions}"
        if self.kind is PolicyKind.SPECIFIC:
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


LABEL_SYNTAX = "MODEL:LABEL=VERSION"


@dataclasses.dataclass(frozen=True)
class VersionLabels:
    """`--label` values of `serve` and `serving-config`, one syntax for both: `MODEL:LABEL=VERSION`.

    Attributes:
        by_model: `{model: {label: version}}`.
        deprecated: the items written in the old `LABEL=VERSION` form of `serving-config`
            (still read, for every model named), for a deprecation note.
    """

    by_model: dict[str, dict[str, int]]
    deprecated: tuple[str, ...] = ()

    @classmethod
    def parse(cls, items: list[str], *, every_model: Sequence[str] = ()) -> "VersionLabels":
        """Reads `MODEL:LABEL=VERSION` items; an item without `MODEL:` applies to each of `every_model`.

        Raises:
            BadInput: a malformed item, an invalid model name or label, a label given twice
                for one model, or a `LABEL=VERSION` item where no model list applies.
        """
        by_model: dict[str, dict[str, int]] = {}
        deprecated = []
        for item in items:
            model, colon, rest = item.rpartition(":")
            label, sep, version = rest.partition("=")
            if not sep or not _LABEL.match(label) or not version.isdigit() or int(version) < 1 or (colon and not model):
                raise BadInput(f"--label {item!r}: use {LABEL_SYNTAX}, e.g. demo:stable=2 (LABEL: a letter, then "
                               "letters, digits, '_' or '-'; VERSION: a number from 1).")
            if colon:
                try:
                    models = [check_name(model)]
                except BadInput as exc:
                    raise BadInput(f"--label {item!r}: {exc}") from None
            elif every_model:
                models = list(every_model)
                deprecated.append(item)
            else:
                raise BadInput(f"--label {item!r} names no model: use {LABEL_SYNTAX}, e.g. demo:{item}.")
            for name in models:
                labels = by_model.setdefault(name, {})
                if label in labels:
                    raise BadInput(f"--label {label!r} is given twice for model {name!r}.")
                labels[label] = int(version)
        return cls(by_model=by_model, deprecated=tuple(deprecated))

    def deprecation_note(self) -> str | None:
        if not self.deprecated:
            return None
        return (f"--label {', '.join(self.deprecated)}: the LABEL=VERSION form is deprecated and applies to every "
                f"--name; write {LABEL_SYNTAX} (as `seqexport serve` does).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """One model of `models.config`.

    Attributes:
        name: TF Serving's model name (the folder under the base path).
        base_path: the model folder as the SERVER sees it (e.g. `/models/NAME` in the container).
        policy: the version policy.
        labels: version labels, e.g. {"stable": 1, "canary": 2}.
    """

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = dataclasses.field(default_factory=dict)


def model_server_config(entries: list[ModelEntry]):
    """The `ModelServerConfig` of `models.config`: `model_platform` "tensorflow" for each."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for entry in entries:
        model = config.model_config_list.config.add()
        model.name = entry.name
        model.base_path = entry.base_path
        model.model_platform = "tensorflow"
        model.model_version_policy.CopyFrom(entry.policy.to_proto())
        for label, version in sorted(entry.labels.items()):
            model.version_labels[label] = version
    return config


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchingChoice:
    """The values of `batching.config`, each with the reason it was chosen.

    Attributes:
        max_batch_size: rows per batch (see `from_model`).
        batch_timeout_micros: longest wait for a batch to fill.
        max_enqueued_batches: queue bound; beyond it TF Serving answers UNAVAILABLE.
        num_batch_threads: threads running batches.
        allowed_batch_sizes: sizes a batch is padded up to; the last is max_batch_size.
        reasons: field name -> why this value.
    """

    max_batch_size: int
    batch_timeout_micros: int
    max_enqueued_batches: int
    num_batch_threads: int
    allowed_batch_sizes: tuple[int, ...]
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ValueError(
                "`allowed_batch_sizes` must increase and end with `max_batch_size` (TF Serving refuses "
                f"the file otherwise). Got: {sizes} with max_batch_size {self.max_batch_size}"
            )
        for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, field) < (0 if field == "batch_timeout_micros" else 1):
                raise ValueError(f"`{field}` must be positive. Got: {getattr(self, field)}")

    @classmethod
    def from_model(cls, *, parameter_count: int, threads: int) -> "BatchingChoice":
        """Values derived from the model's size and the server's cores.

        - `max_batch_size`: the largest power of two (within 8..128) whose batch
          step costs at most `BATCH_FLOP_BUDGET` (2^24) FLOPs, counting 2 FLOPs
          per trainable parameter per row and step. 2^24 FLOPs is ~0.1 ms at the
          ~165 GFLOP/s sgemm peak of the project's CPU baseline (docs:
          perf_baselines): a batched step stays below TF's fixed cost per call
          (0.3-0.9 ms there), so adding rows costs less than the calls it saves.
          Small RNNs hit the 128 cap.
        - `batch_timeout_micros`: 1000, about one TF call's fixed cost, so a lone
          request waits at most about as long as it runs.
        - `num_batch_threads`: the server's cores (TF Serving's batching guide).
        - `max_enqueued_batches`: 2 per thread: a request waits behind at most
          about two batch runs, then gets UNAVAILABLE at once and can retry on
          another replica (the state lives in the client, so any replica serves it).
        - `allowed_batch_sizes`: powers of two up to `max_batch_size`: few
          distinct shapes for the kernel caches, at most 2x padding. Padding
          rows are copies of a real row: harmless only because the model is batch
          independent, which is why batching needs that proof.
        `pad_variable_length_inputs` stays false: TF Serving pads the time axis with each
        tensor's first element, not with a mask value, so the padded steps would run and
        change the final states and, of a whole-sequence model, its outputs; clients send
        equal lengths instead, padded with the model's mask value (and `lengths`).
        """
        flops_per_row = max(1, 2 * parameter_count)
        fit = BATCH_FLOP_BUDGET // flops_per_row
        size = 2 ** int(math.floor(math.log2(fit))) if fit >= 1 else 1
        size = min(MAX_MAX_BATCH_SIZE, max(MIN_MAX_BATCH_SIZE, size))
        allowed = tuple(2**i for i in range(int(math.log2(size)) + 1))
        return cls(
            max_batch_size=size,
            batch_timeout_micros=BATCH_TIMEOUT_MICROS,
            max_enqueued_batches=ENQUEUED_BATCHES_PER_THREAD * threads,
            num_batch_threads=threads,
            allowed_batch_sizes=allowed,
            reasons={
                "max_batch_size": f"{parameter_count} trainable parameters = {flops_per_row} FLOPs per row and "
                f"step; largest power of two within {MIN_MAX_BATCH_SIZE}..{MAX_MAX_BATCH_SIZE} with a batch "
                f"step <= 2^24 FLOPs",
                "batch_timeout_micros": "about TF's fixed cost of one call: a lone request waits at most ~1x",
                "num_batch_threads": "the server's CPU cores (--cpus)",
                "max_enqueued_batches": f"{ENQUEUED_BATCHES_PER_THREAD} per batch thread: bounded queueing, "
                "then UNAVAILABLE so clients retry elsewhere",
                "allowed_batch_sizes": "powers of two: few distinct shapes, at most 2x padding (padding rows "
                "copy a real row; harmless only for batch-independent models)",
                "pad_variable_length_inputs": "false: TF Serving pads time with each tensor's first element, not "
                "the mask value, which changes final states and whole-sequence outputs; clients send equal lengths "
                "(padded with the mask value, with `lengths` where the export takes them)",
            },
        )

    def to_proto(self):
        params = session_bundle_config_pb2.BatchingParameters()
        params.max_batch_size.value = self.max_batch_size
        params.batch_timeout_micros.value = self.batch_timeout_micros
        params.max_enqueued_batches.value = self.max_enqueued_batches
        params.num_batch_threads.value = self.num_batch_threads
        params.allowed_batch_sizes.extend(self.allowed_batch_sizes)
        params.pad_variable_length_inputs = False
        return params

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"allowed_batch_sizes": list(self.allowed_batch_sizes)}


def monitoring_config(path: str = DEFAULT_PROMETHEUS_PATH):
    """`MonitoringConfig` with Prometheus metrics at `path` (on the REST port)."""
    if not path.startswith("/"):
        raise BadInput(f"--prometheus-path {path!r} must start with '/'.")
    config = monitoring_config_pb2.MonitoringConfig()
    config.prometheus_config.enable = True
    config.prometheus_config.path = path
    return config


def to_text(message, *, header: str = "") -> str:
    """`text_format` of `message`, after `header` turned into `#` comment lines."""
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comments + text_format.MessageToString(message)


def write_text(message, path: Path, *, header: str = "") -> Path:
    """Writes `to_text(message)` to `path` atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(to_text(message, header=header))
    tmp.replace(path)
    return path


def parse_text(path: Path, message_class):
    """Parses `path` into a new `message_class`, as the server does at start.

    Raises:
        ConfigError: names the file, line, column and field that is wrong.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}).") from None
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as exc:
        where = f"{path}:{exc.GetLine()}:{exc.GetColumn()}" if exc.GetLine() else str(path)
        raise ConfigError(
            f"{where}: not a valid {message_class.DESCRIPTOR.full_name}: {exc}. TF Serving would refuse "
            "to start; fix the field or regenerate with `seqexport serving-config`."
        ) from None
