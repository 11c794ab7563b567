"""`seqexport check tfserving`: TF Serving's loader path through the TF C API, and what breaks it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2
from typer.testing import CliRunner

from exporter.artifact import golden_io
from exporter.artifact.errors import BadInput
from exporter.artifact.paths import WARMUP_FILE, golden_path, manifest_path
from exporter.cli.app import app
from serving import config as cfg
from serving.tfserving import capi
from serving.tfserving.check import check_tfserving
from tests.render import assert_fits, assert_whole
from tests.serving.export_copies import make_base

cli = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One compiled runner for the module (the compile takes seconds)."""
    directory = tmp_path_factory.mktemp("capi-cache")
    capi.build(directory=directory)
    return directory


@pytest.fixture()
def base(tmp_path, demo_export):
    return make_base(tmp_path, demo_export.path, versions={1: True})


def _check(path, cache, *extra):
    result = cli.invoke(app, ["check", "tfserving", str(path), "--cache-dir", str(cache), "--json", *extra])
    payload = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result, payload


def _failures(payload) -> list[dict]:
    return [c for c in payload["checks"] if not c["passed"]]


def test_demo_export_is_ready_for_tf_serving(base, cache):
    result = cli.invoke(app, ["serving-config", str(base), "--name", "demo", "--label", "stable=1", "--no-batching"])
    assert result.exit_code == 0, result.output
    result, payload = _check(base / "demo" / "1", cache)
    assert result.exit_code == 0, result.output
    checks = payload["checks"]
    signatures = {"serving_default", "stream", "step", "initial_state"}
    assert {c["signature"] for c in checks if c["check"] == "capi"} == signatures
    assert {c["signature"] for c in checks if c["check"] == "warmup"} == signatures - {"initial_state"}
    assert {c["signature"] for c in checks if c["check"] == "config"} == {cfg.MODELS_CONFIG, cfg.MONITORING_CONFIG}
    assert {c["signature"] for c in checks if c["check"] == "deploy"} == {"docker-compose.yml", "kubernetes.yaml"}
    assert payload["warmup_records"] == 3
    numeric = [c for c in checks if c["max_abs"] is not None]
    assert len(numeric) == (4 + 4 + 4 + 3) + (4 + 4 + 4)  # every output of every run and record
    assert all(c["atol"] == 1e-5 and c["rtol"] == 1e-4 for c in numeric)
    print("max errors:", payload["max_errors"], "timings:", payload["timings"])
    assert payload["max_errors"]["capi"] <= 1e-5 and payload["max_errors"]["warmup"] <= 1e-5
    shown = cli.invoke(app, ["check", "tfserving", str(base / "demo" / "1"), "--cache-dir", str(cache)])
    assert shown.exit_code == 0, shown.output
    print(shown.stdout)
    assert_fits(shown.stdout, 80)  # the readiness table, whole at 80 columns
    assert_whole(shown.stdout, *signatures, cfg.MODELS_CONFIG, "docker-compose.yml", "kubernetes.yaml")
    assert any(line.startswith("timings (s): ") for line in shown.stdout.splitlines())


def test_with_batching_initial_state_is_flagged(base, cache):
    """TF Serving's batching layer rejects rank-0 inputs: initial_state's batch_size."""
    assert cli.invoke(app, ["serving-config", str(base), "--name", "demo"]).exit_code == 0
    result, payload = _check(base / "demo" / "1", cache)
    assert result.exit_code == 1
    (failure,) = _failures(payload)
    assert (failure["check"], failure["signature"], failure["tensor"]) == ("batching", "initial_state", "batch_size")
    assert "at least one dimension" in failure["message"]
    batchable = {c["signature"] for c in payload["checks"] if c["check"] == "batching" and c["passed"]}
    # Every signature with a batch dimension (the fused demo's `_unfused` twins included).
    signatures = set(tf.saved_model.load(str(base / "demo" / "1")).signatures)
    assert {"serving_default", "step", "stream"} <= batchable == signatures - {"initial_state"}


def test_outputs_are_compared_for_real(base, cache):
    """A golden output moved by 1e-3 (100x atol) fails the numeric rows, and says by how much."""
    version = base / "demo" / "1"
    golden = golden_io.load(golden_path(version))
    golden["step/out/y"] = golden["step/out/y"] + 1e-3
    golden_io.save(golden, golden_path(version))
    report = check_tfserving(version, cache=cache)
    bad = [c for c in report.failures if c.tensor == "y"]
    assert {(c.check, c.signature) for c in bad} == {("capi", "step"), ("warmup", "step")}
    assert all(abs(c.max_abs - 1e-3) < 1e-6 for c in bad), [c.max_abs for c in bad]


def _rewrite_saved_model(version: Path, edit) -> None:
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((version / "saved_model.pb").read_bytes())
    (meta_graph,) = [m for m in saved.meta_graphs if "serve" in m.meta_info_def.tags]
    edit(meta_graph)
    (version / "saved_model.pb").write_bytes(saved.SerializeToString())


def test_signature_with_a_tensor_name_that_does_not_exist(base, cache):
    version = base / "demo" / "1"

    def edit(meta_graph):
        meta_graph.signature_def["step"].inputs["x"].name = "no_such_op:0"

    _rewrite_saved_model(version, edit)
    result, payload = _check(version, cache)
    assert result.exit_code == 1, result.output
    failures = _failures(payload)
    assert {(c["check"], c["signature"]) for c in failures} == {("capi", "step"), ("warmup", "step")}
    assert all("no operation named 'no_such_op'" in c["message"] for c in failures)


def test_signature_with_a_method_tf_serving_rejects(base, cache):
    version = base / "demo" / "1"

    def edit(meta_graph):
        meta_graph.signature_def["stream"].method_name = "tensorflow/serving/stream"

    _rewrite_saved_model(version, edit)
    result, payload = _check(version, cache)
    assert result.exit_code == 1
    (failure,) = [c for c in _failures(payload) if c["check"] == "signature"]
    assert failure["signature"] == "stream" and "method_name" in failure["message"]


def _write_records(path: Path, records: list[bytes]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def test_malformed_warmup_record(base, cache):
    version = base / "demo" / "1"
    path = version / WARMUP_FILE
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # the last record's CRC is cut: TF's reader reports data loss
    result, payload = _check(version, cache)
    assert result.exit_code == 1, result.output
    (failure,) = [c for c in _failures(payload) if c["check"] == "warmup"]
    assert "unreadable as TFRecord" in failure["message"] and "DataLossError" in failure["message"]

    _write_records(path, [b"\xff\xff\xff\xff"])
    result, payload = _check(version, cache)
    assert result.exit_code == 1
    (failure,) = _failures(payload)
    assert "record 0 is not a PredictionLog" in failure["message"]


def test_warmup_record_for_an_unknown_signature_or_wrong_inputs(base, cache, demo_export):
    version = base / "demo" / "1"
    logs = [prediction_log_pb2.PredictionLog.FromString(r)
            for r in tf.data.TFRecordDataset(str(version / WARMUP_FILE)).as_numpy_iterator()]
    unknown = prediction_log_pb2.PredictionLog()
    unknown.CopyFrom(logs[0])
    unknown.predict_log.request.model_spec.signature_name = "no_such_signature"
    extra = prediction_log_pb2.PredictionLog()
    extra.CopyFrom(logs[1])
    extra.predict_log.request.inputs["bogus"].CopyFrom(tf.make_tensor_proto(np.zeros(1, np.float32)))
    wrong_dtype = prediction_log_pb2.PredictionLog()
    wrong_dtype.CopyFrom(logs[2])
    request = wrong_dtype.predict_log.request
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(tf.make_ndarray(request.inputs["x"]).astype(np.float64)))
    _write_records(version / WARMUP_FILE, [l.SerializeToString() for l in (logs[0], unknown, extra, wrong_dtype)])
    result, payload = _check(version, cache)
    assert result.exit_code == 1
    messages = {c["message"].split(":")[0]: c["message"] for c in _failures(payload)}
    assert set(messages) == {"record 1", "record 2", "record 3"}, messages
    assert 'Serving signature key "no_such_signature" not found' in messages["record 1"]
    assert "input size does not match signature" in messages["record 2"] and "bogus" in messages["record 2"]
    assert "TF_SessionRun failed" in messages["record 3"] and "double" in messages["record 3"]


def test_config_field_typo(base, cache):
    assert cli.invoke(app, ["serving-config", str(base), "--name", "demo", "--no-batching"]).exit_code == 0
    path = base / cfg.MODELS_CONFIG
    path.write_text(path.read_text().replace("model_platform", "model_platfrom"))
    result, payload = _check(base / "demo" / "1", cache)
    assert result.exit_code == 1
    (failure,) = _failures(payload)
    assert failure["check"] == "config" and failure["signature"] == cfg.MODELS_CONFIG
    assert "models.config:" in failure["message"] and "model_platfrom" in failure["message"]
    text = cli.invoke(app, ["check", "tfserving", str(base / "demo" / "1"), "--cache-dir", str(cache)])
    assert text.exit_code == 1
    assert_fits(text.stdout, 80)
    flat = " ".join(text.output.split())
    assert "1 of" in flat and "checks failed; first: config models.config" in flat and "Traceback" not in flat


def test_config_that_parses_but_does_not_serve_this_version(base, cache):
    assert cli.invoke(app, ["serving-config", str(base), "--name", "demo", "--no-batching"]).exit_code == 0
    shutil.copytree(base / "demo" / "1", base / "demo" / "2")  # latest:1 now serves 2, not 1
    result, payload = _check(base / "demo" / "1", cache)
    assert result.exit_code == 1
    (failure,) = _failures(payload)
    assert "version 1 is not among the versions the policy serves ([2])" in failure["message"]


def test_deploy_file_naming_a_missing_file(base, cache):
    assert cli.invoke(app, ["serving-config", str(base), "--name", "demo", "--no-batching"]).exit_code == 0
    (base / cfg.MONITORING_CONFIG).unlink()
    result, payload = _check(base / "demo" / "1", cache)
    assert result.exit_code == 1
    assert {c["signature"] for c in _failures(payload)} == {"docker-compose.yml", "kubernetes.yaml"}
    assert all("monitoring.config" in c["message"] for c in _failures(payload))


def test_version_that_does_not_load(base, cache):
    version = base / "demo" / "1"
    for path in (version / "variables").iterdir():
        path.write_bytes(b"")
    result, payload = _check(version, cache)
    assert result.exit_code == 1
    load = [c for c in payload["checks"] if c["check"] == "load"]
    assert len(load) == 1 and not load[0]["passed"]
    assert "TF_LoadSessionFromSavedModel could not load" in load[0]["message"]


@pytest.mark.parametrize("remove", ["saved_model.pb", "manifest", "golden"])
def test_unusable_input_exits_2(base, cache, remove):
    version = base / "demo" / "1"
    target = {"saved_model.pb": version / "saved_model.pb", "manifest": manifest_path(version),
              "golden": golden_path(version)}[remove]
    target.unlink()
    result = cli.invoke(app, ["check", "tfserving", str(version), "--cache-dir", str(cache)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_runner_cache_is_keyed_by_source_and_never_inside_the_package_or_an_export(cache, tmp_path, monkeypatch,
                                                                                   demo_export):
    binary, seconds = capi.build(directory=cache)
    assert seconds == 0.0 and binary.parent == cache.resolve()  # cached: no rebuild
    changed = tmp_path / "seqexport_run.c"
    changed.write_text(capi.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(capi, "SOURCE", changed)
    assert capi.binary_path(cache) != binary  # a changed source gets its own binary: rebuilt on next use
    with pytest.raises(BadInput, match="inside the seqexport package"):
        capi.build(directory=Path(capi.__file__).parent / "cache")
    with pytest.raises(BadInput, match="inside the SavedModel"):
        capi.build(directory=demo_export.path / "assets.extra" / "cache")


def test_runner_reports_each_run_on_its_own(demo_export, cache):
    """A failing run does not hide the others; results come back in order."""
    golden = golden_io.load(golden_path(demo_export.path))
    good = capi.CapiRun(label="good", feeds={"initial_state_batch_size:0": golden["initial_state/in/batch_size"]},
                        fetches=("PartitionedCall:0",))
    bad = capi.CapiRun(label="bad", feeds={"nope:0": np.zeros(2, np.float32)}, fetches=("PartitionedCall:0",))
    answer = capi.run_saved_model(demo_export.path, [bad, good], cache=cache)
    assert [r.label for r in answer.results] == ["bad", "good"]
    assert not answer.results[0].ok and "no operation named 'nope'" in answer.results[0].error
    assert answer.results[1].ok and answer.results[1].outputs["PartitionedCall:0"].ndim == 2
    assert answer.tf_version == tf.__version__ and answer.load_us > 0
    assert os.access(answer.binary, os.X_OK)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["masking", "embedding", "stacked_functional", "gru_reset_before", "last_step_only",
                                  "lstm"])
def test_layer_kinds_load_and_run_through_the_c_api(tmp_path, cache, kind):
    """Int inputs (embedding), `lengths` (masking), [B, O] outputs (last step only), stacks,
    TF's fused BlockLSTM kernel (lstm: the C API library must have it, as the model server does)."""
    from exporter.keras_model import step_model_from_keras
    from exporter.pipeline import write_export
    from tests.exporter import models

    version = tmp_path / kind / "1"
    write_export(step_model_from_keras(models.build(kind)), version, name=kind, source={"kind": "test"})
    report = check_tfserving(version, cache=cache)
    print(kind, report.summary())
    assert report.passed, report.failures
    assert report.warmup_records == 3 and set(report.max_errors()) == {"capi", "warmup"}
