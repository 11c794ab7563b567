"""Prove that TF Serving can load and run a version, without the model server binary.

TF Serving loads a version with TensorFlow's C++ SavedModel loader (tag
`serve`), replays its warmup records, and runs each Predict by the tensor names
of the requested SignatureDef. This check does the same through TensorFlow's C
API (`serving.tfserving.capi`): it reads the SignatureDefs from `saved_model.pb`, runs
every signature on the golden inputs and every warmup record (validated the way
TF Serving's `RunPredict` validates a request), and compares the outputs with
`golden.npz`. It also parses the config files beside BASE with the official
messages and checks what TF Serving checks at start.

Rows use the verify table's format: `capi` (a signature on golden inputs),
`warmup` (a replayed record), `signature`, `load`, `config`, `batching`, `deploy`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import yaml
from google.protobuf.message import DecodeError

from exporter.artifact import golden_io
from exporter.artifact.compare import compare, failed
from exporter.artifact.errors import BadInput
from exporter.artifact.manifest import read_manifest
from exporter.artifact.names import DEFAULT_SIGNATURE, SERVE_TAG
from exporter.artifact.paths import (
    SAVED_MODEL_FILE,
    WARMUP_FILE,
    golden_path,
    is_saved_model_dir,
    manifest_path,
    version_folders,
)
from exporter.artifact.specs import CheckResult, CheckRows, Manifest, Tolerance
from serving import config as cfg
from serving import deploy
from serving.protos import monitoring_config_pb2, session_bundle_config_pb2
from serving.tfserving.capi import CapiRun, LoadFailed, run_saved_model, supported
from serving.warmup import WarmupError, read_warmup

INIT_OP_KEY = "__saved_model_init_op"
# The method names TF Serving's Predict accepts (predict_util.cc, VerifySignature).
PREDICT_METHODS = (
    "tensorflow/serving/predict",
    "tensorflow/serving/classify",
    "tensorflow/serving/regress",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TFServingReport(CheckRows):
    """Every row of one check, with what the loader reported and the phase times (seconds)."""

    export_dir: str
    checks: tuple[CheckResult, ...]
    tf_version: str = ""
    warmup_records: int = 0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def max_errors(self) -> dict[str, float]:
        """Largest max-abs error per numeric check (`capi`, `warmup`)."""
        worst: dict[str, float] = {}
        for c in self.checks:
            if c.max_abs is not None:
                worst[c.check] = max(worst.get(c.check, 0.0), c.max_abs)
        return worst

    def summary(self) -> str:
        if self.passed:
            errors = ", ".join(f"{k} max abs {v:.2e}" for k, v in self.max_errors().items())
            return f"all {len(self.checks)} checks passed ({errors})"
        return self.failure_summary()

    def to_json(self) -> dict:
        return {
            "export_dir": self.export_dir,
            "passed": self.passed,
            "tf_version": self.tf_version,
            "warmup_records": self.warmup_records,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "max_errors": self.max_errors(),
            "checks": [c.to_json() for c in self.checks],
        }


def _row(check: str, signature: str, tensor: str, passed: bool, message: str) -> CheckResult:
    return CheckResult(check=check, signature=signature, tensor=tensor, passed=passed, message=message)


def _inputs(export_dir: Path) -> tuple[Manifest, dict[str, np.ndarray]]:
    if not export_dir.is_dir():
        raise BadInput(f"{str(export_dir)!r} is not a folder.")
    if not is_saved_model_dir(export_dir):
        raise BadInput(f"{str(export_dir)!r} is not a SavedModel version folder (no {SAVED_MODEL_FILE} in it).")
    for needed in (manifest_path(export_dir), golden_path(export_dir)):
        if not needed.is_file():
            raise BadInput(f"{needed} is missing: the outputs cannot be checked without seqexport's "
                           "manifest and goldens. Check an export made by `seqexport export`.")
    manifest = read_manifest(export_dir)
    try:
        golden = golden_io.load(golden_path(export_dir))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{golden_path(export_dir)} is unreadable: {exc}") from None
    return manifest, golden


def serve_meta_graph(export_dir: Path):
    """The MetaGraphDef TF Serving loads: the one tagged exactly {"serve"}.

    Returns (meta_graph or None, failure message).
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((export_dir / SAVED_MODEL_FILE).read_bytes())
    except DecodeError as exc:
        return None, f"saved_model.pb does not parse as a SavedModel: {exc}"
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == {SERVE_TAG}:
            return meta_graph, ""
    tags = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    return None, f"no MetaGraphDef tagged exactly ['{SERVE_TAG}'] (found {tags}); TF Serving loads that one"


def _signature_rows(meta_graph, manifest: Manifest) -> list[CheckResult]:
    rows = []
    defs = meta_graph.signature_def
    for name in sorted(defs):
        if name == INIT_OP_KEY:
            continue
        method = defs[name].method_name
        if method not in PREDICT_METHODS:
            rows.append(_row("signature", name, "-", False,
                             f"method_name {method!r}: TF Serving's Predict expects one of {list(PREDICT_METHODS)}"))
    for spec in manifest.signatures:
        if spec.name not in defs:
            rows.append(_row("signature", spec.name, "-", False, "in the manifest but not in saved_model.pb"))
            continue
        want_in, want_out = {t.name for t in spec.inputs}, {t.name for t in spec.outputs}
        got_in, got_out = set(defs[spec.name].inputs), set(defs[spec.name].outputs)
        if (want_in, want_out) != (got_in, got_out):
            rows.append(_row("signature", spec.name, "-", False,
                             f"keys differ from the manifest: inputs {sorted(got_in)} vs {sorted(want_in)}, "
                             f"outputs {sorted(got_out)} vs {sorted(want_out)}"))
        elif defs[spec.name].method_name in PREDICT_METHODS:
            rows.append(_row("signature", spec.name, "-", True, "as in manifest"))
    return rows


def _make_run(check: str, signature: str, label: str, feeds: dict, fetches: tuple):
    """A `CapiRun`, or the failed row saying why these feeds cannot be passed."""
    odd = [k for k, v in feeds.items() if not supported(v)]
    if odd:
        return failed(check, signature, ",".join(odd), "dtype not passed by the C API runner (numeric only)")
    try:
        return CapiRun(label=label, feeds=feeds, fetches=fetches)
    except ValueError as exc:
        return failed(check, signature, "-", f"not a TF tensor name: {exc}")


def _golden_runs(meta_graph, manifest: Manifest, golden: dict) -> tuple[list, list[CheckResult]]:
    """A run per manifest signature: golden inputs fed by SignatureDef tensor name."""
    runs, rows = [], []
    defs = meta_graph.signature_def
    for spec in manifest.signatures:
        if spec.name not in defs:
            continue
        signature = defs[spec.name]
        missing = [k for k in signature.inputs if f"{spec.name}/in/{k}" not in golden]
        if missing:
            rows.append(failed("capi", spec.name, ",".join(missing), "golden.npz has no input for these keys"))
            continue
        feeds = {signature.inputs[k].name: golden[f"{spec.name}/in/{k}"] for k in sorted(signature.inputs)}
        aliases = sorted(signature.outputs)
        run = _make_run("capi", spec.name, f"sig{len(runs)}", feeds, tuple(signature.outputs[a].name for a in aliases))
        if isinstance(run, CheckResult):
            rows.append(run)
        else:
            runs.append((spec.name, aliases, run))
    return runs, rows


def _warmup_runs(export_dir: Path, meta_graph) -> tuple[list, list[CheckResult], int]:
    """Warmup records turned into runs after TF Serving's own request checks.

    Returns (runs as (record index, signature, output aliases, inputs, CapiRun), failure rows, record count).
    """
    import tensorflow as tf

    path = export_dir / WARMUP_FILE
    if not path.is_file():
        return [], [_row("warmup", "-", "-", False,
                         f"{WARMUP_FILE} is missing: re-export with this seqexport (TF Serving would "
                         "start cold, and this check has nothing to replay)")], 0
    try:
        logs = read_warmup(path)
    except WarmupError as exc:
        return [], [_row("warmup", "-", "-", False, str(exc))], 0
    runs, rows = [], []
    defs = meta_graph.signature_def
    for index, log in enumerate(logs):
        where = f"record {index}"
        kind = log.WhichOneof("log_type")
        if kind != "predict_log":
            rows.append(_row("warmup", where, "-", False,
                             f"log type {kind!r}: only predict_log records are replayed here "
                             "(TF Serving skips empty records and rejects session_run logs)"))
            continue
        request = log.predict_log.request
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if name not in defs or name == INIT_OP_KEY:
            rows.append(_row("warmup", name, "-", False,
                             f"{where}: Serving signature key \"{name}\" not found (TF Serving fails the load)"))
            continue
        signature = defs[name]
        if signature.method_name not in PREDICT_METHODS:
            rows.append(_row("warmup", name, "-", False, f"{where}: method_name {signature.method_name!r}"))
            continue
        sent, wanted = set(request.inputs), set(signature.inputs)
        if sent != wanted:
            rows.append(_row("warmup", name, "-", False,
                             f"{where}: input size does not match signature: sent {sorted(sent)}, signature "
                             f"has {sorted(wanted)} (extra {sorted(sent - wanted)}, missing "
                             f"{sorted(wanted - sent)}); TF Serving fails the load"))
            continue
        aliases = list(request.output_filter) or sorted(signature.outputs)
        unknown = [a for a in aliases if a not in signature.outputs]
        if unknown:
            rows.append(_row("warmup", name, ",".join(unknown), False,
                             f"{where}: output tensor alias not found in signature"))
            continue
        try:
            inputs = {k: tf.make_ndarray(request.inputs[k]) for k in sorted(sent)}
        except (TypeError, ValueError) as exc:
            rows.append(_row("warmup", name, "-", False, f"{where}: a TensorProto does not convert: {exc}"))
            continue
        feeds = {signature.inputs[k].name: v for k, v in inputs.items()}
        run = _make_run("warmup", name, f"w{index}", feeds, tuple(signature.outputs[a].name for a in aliases))
        if isinstance(run, CheckResult):
            rows.append(dataclasses.replace(run, message=f"{where}: {run.message}"))
        else:
            runs.append((index, name, aliases, inputs, run))
    return runs, rows, len(logs)


def _compare_outputs(check, signature, aliases, run, result, golden, tolerance, note="") -> list[CheckResult]:
    rows = []
    for alias, tensor_name in zip(aliases, run.fetches):
        want = golden.get(f"{signature}/out/{alias}")
        got = result.outputs[tensor_name]
        if want is None:
            rows.append(_row(check, signature, alias, False, "golden.npz has no output for this key"))
            continue
        row = compare(check, signature, alias, got, want, tolerance)
        rows.append(dataclasses.replace(row, message=f"{note}: {row.message}" if row.message else note)
                    if note else row)
    return rows


def _config_rows(config_dir: Path, model: str, version: int, meta_graph) -> list[CheckResult]:
    rows = []
    models_file = config_dir / cfg.MODELS_CONFIG
    if models_file.is_file():
        rows.extend(_models_config_rows(models_file, model, version, config_dir))
    batching_file = config_dir / cfg.BATCHING_CONFIG
    if batching_file.is_file():
        try:
            params = cfg.parse_text(batching_file, session_bundle_config_pb2.BatchingParameters)
        except cfg.ConfigError as exc:
            rows.append(_row("config", batching_file.name, "BatchingParameters", False, str(exc)))
        else:
            sizes = list(params.allowed_batch_sizes)
            limit = params.max_batch_size.value if params.HasField("max_batch_size") else None
            if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != limit):
                rows.append(_row("config", batching_file.name, "allowed_batch_sizes", False,
                                 f"{sizes} must increase and end with max_batch_size ({limit}); TF Serving "
                                 "refuses to load models with this file"))
            else:
                rows.append(_row("config", batching_file.name, "BatchingParameters", True, ""))
            rows.extend(_batching_rows(meta_graph))
    monitoring_file = config_dir / cfg.MONITORING_CONFIG
    if monitoring_file.is_file():
        try:
            monitoring = cfg.parse_text(monitoring_file, monitoring_config_pb2.MonitoringConfig)
        except cfg.ConfigError as exc:
            rows.append(_row("config", monitoring_file.name, "MonitoringConfig", False, str(exc)))
        else:
            path = monitoring.prometheus_config.path
            ok = not path or path.startswith("/")
            rows.append(_row("config", monitoring_file.name, "MonitoringConfig", ok,
                             "" if ok else f"prometheus path {path!r} must start with '/'"))
    rows.extend(_deploy_rows(config_dir))
    return rows


def _models_config_rows(path: Path, model: str, version: int, config_dir: Path) -> list[CheckResult]:
    from tensorflow_serving.config import model_server_config_pb2

    try:
        server_config = cfg.parse_text(path, model_server_config_pb2.ModelServerConfig)
    except cfg.ConfigError as exc:
        return [_row("config", path.name, "ModelServerConfig", False, str(exc))]
    entries = [c for c in server_config.model_config_list.config if c.name == model]
    if not entries:
        names = [c.name for c in server_config.model_config_list.config]
        return [_row("config", path.name, model, False, f"no ModelConfig named {model!r} (has {names})")]
    entry = entries[0]
    problems = []
    if entry.base_path.rstrip("/").rsplit("/", 1)[-1] != model:
        problems.append(f"base_path {entry.base_path!r} does not end with the model folder {model!r}")
    if entry.model_platform != "tensorflow":
        problems.append(f"model_platform {entry.model_platform!r} is not 'tensorflow'")
    try:
        policy = cfg.VersionPolicy.from_proto(entry.model_version_policy)
    except ValueError as exc:
        return [_row("config", path.name, model, False, f"model_version_policy: {exc}")]
    served = policy.served(sorted(version_folders(config_dir / model)))
    if version not in served:
        problems.append(f"version {version} is not among the versions the policy serves ({served})")
    for label, labelled in entry.version_labels.items():
        if labelled not in served:
            problems.append(f"label {label!r} -> version {labelled}, which is not served ({served})")
    if problems:
        return [_row("config", path.name, model, False, "; ".join(problems))]
    return [_row("config", path.name, model, True, f"serves {served}")]


def _batching_rows(meta_graph) -> list[CheckResult]:
    """Signatures TF Serving's batching session cannot run: an input without a batch dimension."""
    rows = []
    for name, signature in sorted(meta_graph.signature_def.items()):
        if name == INIT_OP_KEY:
            continue
        scalars = [k for k, info in signature.inputs.items()
                   if not info.tensor_shape.unknown_rank and len(info.tensor_shape.dim) == 0]
        if scalars:
            rows.append(_row("batching", name, ",".join(sorted(scalars)), False,
                             "rank-0 input: with --enable_batching TF Serving answers 'Batching Run() input "
                             "tensors must have at least one dimension' to every call of this signature"))
        else:
            rows.append(_row("batching", name, "-", True, "batchable"))
    return rows


def _deploy_rows(config_dir: Path) -> list[CheckResult]:
    rows = []
    for file_name, flags_of in (
        (deploy.COMPOSE_FILE, lambda d: d["services"]["tfserving"]["command"]),
        (deploy.KUBERNETES_FILE, lambda d: d["items"][0]["spec"]["template"]["spec"]["containers"][0]["args"]),
    ):
        path = config_dir / file_name
        if not path.is_file():
            continue
        try:
            flags = deploy.parse_flags(flags_of(yaml.safe_load(path.read_text())))
        except (yaml.YAMLError, ValueError, KeyError, IndexError, TypeError) as exc:
            rows.append(_row("deploy", file_name, "-", False, f"does not parse as written: {exc}"))
            continue
        missing = [f"--{k}={flags[k]}" for k in deploy.FILE_FLAGS
                   if k in flags and not deploy.container_to_host(flags[k], config_dir).is_file()]
        rows.append(_row("deploy", file_name, "-", not missing,
                         f"flags name missing files: {missing}" if missing else "files exist"))
    return rows


def check_tfserving(
    export_dir: Path, *, config_dir: Path | None = None, cache: Path | None = None
) -> TFServingReport:
    """Loads `export_dir` through the C API and checks it as TF Serving would use it.

    Args:
        export_dir: a published version folder `BASE/NAME/VERSION`.
        config_dir: where `serving-config` wrote its files; default BASE
            (two levels up). Files that are not there are not checked.
        cache: folder for the compiled runner (see `serving.tfserving.capi.cache_dir`).

    Raises:
        BadInput: not a seqexport export (no manifest/goldens), or the runner cannot be built (exit 2).
    """
    started = time.monotonic()
    export_dir = Path(export_dir).resolve()
    manifest, golden = _inputs(export_dir)
    # The tolerance of the export's own reload checks (float32 default for old manifests).
    tolerance: Tolerance = manifest.options.tolerance or Tolerance(atol=1e-5, rtol=1e-4)
    rows: list[CheckResult] = []
    timings: dict[str, float] = {}
    meta_graph, why = serve_meta_graph(export_dir)
    if meta_graph is None:
        return TFServingReport(export_dir=str(export_dir), checks=(_row("load", "-", "-", False, why),),
                               timings={"total": time.monotonic() - started})
    rows.extend(_signature_rows(meta_graph, manifest))
    golden_runs, failures = _golden_runs(meta_graph, manifest, golden)
    rows.extend(failures)
    warmup_runs, failures, records = _warmup_runs(export_dir, meta_graph)
    rows.extend(failures)
    prepared = time.monotonic()
    tf_version = ""
    try:
        answer = run_saved_model(export_dir, [r[-1] for r in golden_runs] + [r[-1] for r in warmup_runs],
                                 cache=cache)
    except LoadFailed as exc:
        rows.insert(0, _row("load", "-", "-", False, str(exc)))
        answer = None
    if answer is not None:
        tf_version = answer.tf_version
        rows.insert(0, _row("load", "-", "-", True, f"loaded, tag {SERVE_TAG}"))
        results = iter(answer.results)
        for name, aliases, run in golden_runs:
            result = next(results)
            if not result.ok:
                rows.append(failed("capi", name, "-", result.error))
                continue
            rows.extend(_compare_outputs("capi", name, aliases, run, result, golden, tolerance))
        for index, name, aliases, inputs, run in warmup_runs:
            result = next(results)
            if not result.ok:
                rows.append(failed("warmup", name, "-", f"record {index}: {result.error}"))
                continue
            same = all(
                f"{name}/in/{k}" in golden and np.array_equal(v, golden[f"{name}/in/{k}"]) for k, v in inputs.items()
            )
            if same:
                rows.extend(_compare_outputs("warmup", name, aliases, run, result, golden, tolerance,
                                             f"record {index}"))
            else:
                rows.append(_row("warmup", name, "-", True, f"record {index} ran (inputs are not the goldens: "
                                 "outputs not compared)"))
        timings.update(build=answer.build_s, load=answer.load_us / 1e6,
                       runs=sum(r.run_us for r in answer.results) / 1e6)
    timings["capi_process"] = time.monotonic() - prepared
    rows.extend(_config_rows(Path(config_dir) if config_dir else export_dir.parent.parent,
                             export_dir.parent.name, _version_of(export_dir), meta_graph))
    timings["total"] = time.monotonic() - started
    return TFServingReport(export_dir=str(export_dir), checks=tuple(rows), tf_version=tf_version,
                           warmup_records=records, timings=timings)


def _version_of(export_dir: Path) -> int:
    return int(export_dir.name) if export_dir.name.isdigit() else -1
