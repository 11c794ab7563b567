"""Triton repositories of whole-sequence exports (a Bidirectional LSTM, plain and masked; a model of two
inputs, the second with a time length of its own): no sequence
batcher, one request of whole sequences; checked on the real `tritonserver` of the nvidia-pytriton wheel
(one server shared by the module's tests, broken copies in the same repository)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest, write_manifest
from exporter.cli.app import app
from exporter.convert import triton
from exporter.convert.runtimes import OrtModel
from exporter.convert.targets import convert_export
from tests.exporter.convert.common import describe

KINDS = ("bidirectional", "masked_bidirectional", "two_inputs")
INPUTS = {"bidirectional": ["inputs"], "masked_bidirectional": ["inputs", "lengths"], "two_inputs": ["inputs", "target"]}
TARGETS = {"triton": "ort", "triton-python": "py"}  # model name suffix in the shared repository


def _name(kind: str, target: str) -> str:
    return f"{kind}_{TARGETS[target]}"


def _perturb(onnx_file):
    """Adds 0.05 to the model's first float weight matrix (a model whose numbers drifted)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_file))
    weight = next(w for w in model.graph.initializer
                  if w.data_type == onnx.TensorProto.FLOAT and len(numpy_helper.to_array(w).shape) == 2)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + np.float32(0.05), weight.name))
    onnx.save(model, str(onnx_file))


@pytest.fixture(scope="module")
def repo(whole_sequence_exports, tmp_path_factory):
    """Both exports for both Triton targets in one repository, plus broken copies of the Bidirectional
    one: `*_perturbed` (weights changed after conversion) and `bidirectional_ort_bad_dims` (an input
    declared with the wrong feature size)."""
    path = tmp_path_factory.mktemp("triton_whole")
    reports = {(kind, target): convert_export(whole_sequence_exports[kind], target, path,
                                              triton_name=_name(kind, target))
               for kind in KINDS for target in TARGETS}
    for target, model_file in (("triton", triton.MODEL_FILE), ("triton-python", triton.PYTHON_WHOLE_FILE)):
        source, broken = path / _name("bidirectional", target), path / f"{_name('bidirectional', target)}_perturbed"
        shutil.copytree(source, broken)
        _perturb(broken / "1" / model_file)
        config = triton.read_config(broken / triton.CONFIG_FILE)
        config.name = broken.name
        triton.write_config(config, broken / triton.CONFIG_FILE)
    bad = path / "bidirectional_ort_bad_dims"
    shutil.copytree(path / _name("bidirectional", "triton"), bad)
    config = triton.read_config(bad / triton.CONFIG_FILE)
    config.name = bad.name
    config.input[0].dims[1] = 4
    triton.write_config(config, bad / triton.CONFIG_FILE)
    return path, reports


@pytest.fixture(scope="module")
def server(repo):
    from exporter.convert.triton_server import TritonServer

    with TritonServer(repo[0]) as running:
        print(f"tritonserver pid {running.pid} live in {running.start_seconds:.2f} s")
        yield running


@pytest.mark.parametrize("kind", KINDS)
def test_onnxruntime_repository_has_no_sequence_batcher(repo, whole_sequence_exports, kind):
    path, reports = repo
    report, name = reports[kind, "triton"], _name(kind, "triton")
    print(describe(report))
    assert report.passed, report.failures
    assert [f.path for f in report.files] == [f"{name}/1/model.onnx"]
    assert [c.signature for c in report.checks] == ["serving_default"]  # the parity row vs the goldens
    assert read_manifest(whole_sequence_exports[kind]).whole_sequence
    config = triton.read_config(path / name / triton.CONFIG_FILE)
    assert (config.name, config.platform, config.max_batch_size) == (name, "onnxruntime_onnx", 8)
    assert not config.HasField("sequence_batching") and not config.HasField("dynamic_batching")
    want_in = {"bidirectional": [("inputs", [-1, 3], False)],
               "masked_bidirectional": [("inputs", [-1, 3], False), ("lengths", [1], True)],
               "two_inputs": [("inputs", [-1, 3], False), ("target", [6, 3], False)]}[kind]
    assert [(t.name, list(t.dims), t.HasField("reshape")) for t in config.input] == want_in
    assert [(t.name, list(t.dims)) for t in config.output] == [("outputs", [-1, 8 if kind == "bidirectional" else 2])]
    assert triton.check_config(config, OrtModel.load(path / name / "1" / triton.MODEL_FILE)) == []
    assert any("no dynamic_batching (batch independence not proven" in n for n in report.notes), report.notes


def test_dynamic_batching_only_where_the_manifest_proves_batch_independence(whole_sequence_exports, tmp_path):
    export = tmp_path / "bidirectional" / "1"
    shutil.copytree(whole_sequence_exports["bidirectional"], export)
    write_manifest(dataclasses.replace(read_manifest(export), batch_independent=True), export)
    report = convert_export(export, "triton", tmp_path / "repo")
    assert report.passed, report.failures
    config = triton.read_config(tmp_path / "repo" / "bidirectional" / triton.CONFIG_FILE)
    assert config.HasField("dynamic_batching") and not config.HasField("sequence_batching")
    assert any("requests batched together must share T" in n for n in report.notes), report.notes


@pytest.mark.parametrize("kind", KINDS)
def test_python_repository_runs_serving_default_per_request(repo, kind):
    path, reports = repo
    report, name = reports[kind, "triton-python"], _name(kind, "triton-python")
    assert report.passed, report.failures
    assert sorted(f.path for f in report.files) == [f"{name}/1/model.py", f"{name}/1/serving_default.onnx",
                                                    f"{name}/config.pbtxt"]
    config = triton.read_config(path / name / triton.CONFIG_FILE)
    assert (config.backend, config.max_batch_size) == ("python", 8)
    assert not config.HasField("sequence_batching") and not config.HasField("dynamic_batching")
    assert triton.python_spec(config)["whole_sequence_model"] == "serving_default.onnx"
    assert [t.name for t in config.input] == INPUTS[kind]


def test_check_on_the_real_server_equals_golden(repo, server):
    """Python backend: every golden row over gRPC and HTTP, all in one request and each alone; onnxruntime:
    Triton's core validation on the server, config and goldens offline."""
    from exporter.convert.triton_check import check_repository

    names = tuple(_name(k, t) for k in KINDS for t in TARGETS)
    report = check_repository(repo[0], server=server, names=names)
    for row in report.checks:
        print(row.signature, row.tensor, row.passed, row.max_abs, row.atol, row.message[:80])
    assert report.passed, report.failures
    signatures = {c.signature for c in report.checks}
    for kind in KINDS:
        python, ort = _name(kind, "triton-python"), _name(kind, "triton")
        assert {f"{python} {p} {what}" for p in ("grpc", "http") for what in ("3 rows", "row 0", "row 2")} <= signatures
        assert [(c.signature, c.tensor) for c in report.checks if c.signature.startswith(f"{ort} ")] == [
            (f"{ort} server", "config.pbtxt"), (f"{ort} offline", "config vs model.onnx"),
            (f"{ort} offline goldens", "outputs")]
    numbers = [c for c in report.checks if c.max_abs is not None]
    worst = max(numbers, key=lambda c: c.max_abs)
    print(f"worst: {worst.signature} {worst.tensor} max abs {worst.max_abs:.2e} (atol {worst.atol}, rtol {worst.rtol})")
    assert worst.max_abs < 1e-6
    assert any("whole-sequence export (no sequence batcher)" in n for n in report.notes)


def test_a_broken_repository_fails_the_check(repo, server):
    from exporter.convert.triton_check import check_repository

    report = check_repository(repo[0], server=server, names=(
        "bidirectional_py_perturbed", "bidirectional_ort_perturbed", "bidirectional_ort_bad_dims"))
    failures = {(c.signature, c.tensor): c for c in report.failures}
    for (signature, tensor), row in failures.items():
        print(signature, tensor, row.max_abs, row.message[:120])
    assert {("bidirectional_py_perturbed grpc 3 rows", "outputs"), ("bidirectional_py_perturbed http row 1", "outputs"),
            ("bidirectional_ort_perturbed offline goldens", "outputs"),
            ("bidirectional_ort_bad_dims offline", "config vs model.onnx")} <= set(failures)
    assert failures["bidirectional_ort_perturbed offline goldens", "outputs"].max_abs > 1e-3
    assert "config input 'inputs': dims [-1, 4], model has [-1, 3]" in failures[
        "bidirectional_ort_bad_dims offline", "config vs model.onnx"].message


def test_cli_converts_and_checks_a_whole_sequence_export(whole_sequence_exports, tmp_path):
    result = CliRunner().invoke(app, ["convert", str(whole_sequence_exports["masked_bidirectional"]), "--to", "triton",
                                      "--backend", "python", "--out", str(tmp_path / "repo"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] == "triton-python"
    result = CliRunner().invoke(app, ["check", "triton", str(tmp_path / "repo"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] and data["models"] == {"masked_bidirectional": "python"}
    rows = [c for c in data["checks"] if c["max_abs"] is not None]
    assert len(rows) == 8 and all(c["max_abs"] <= c["atol"] for c in rows)
