"""`seqexport serving-config`: configs, deploy files and the record, into BASE; batching only when proven."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from exporter.cli.app import app
from serving import config as cfg
from serving import deploy
from serving.protos import monitoring_config_pb2, session_bundle_config_pb2
from serving.serving_files import RECORD_FILE
from tests import REPO_ROOT
from tests.serving.export_copies import make_base, set_batch_independent

runner = CliRunner()
# Every flag of tensorflow_model_server these files may use, as named in
# tensorflow_serving/model_servers/main.cc (tensorflow/serving@9d981c5).
TF_SERVING_FLAGS = {
    "port", "rest_api_port", "model_config_file", "monitoring_config_file", "enable_model_warmup",
    "enable_batching", "batching_parameters_file", "xla_cpu_compilation_enabled",
}


def _run(*args):
    return runner.invoke(app, ["serving-config", *map(str, args)])


def _text(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _top_level_files(base: Path) -> set[str]:
    return {p.name for p in base.iterdir() if p.is_file()}


@pytest.fixture()
def base(tmp_path, demo_export):
    return make_base(tmp_path, demo_export.path, versions={1: True, 2: True})


def test_writes_every_file_and_they_parse(base):
    from tensorflow_serving.config import model_server_config_pb2

    result = _run(base, "--name", "demo", "--versions", "latest:2", "--label", "demo:stable=1", "--label",
                  "demo:canary=2", "--cpus", "2")
    assert result.exit_code == 0, result.output
    assert _top_level_files(base) == {cfg.MODELS_CONFIG, cfg.BATCHING_CONFIG, cfg.MONITORING_CONFIG,
                                      deploy.COMPOSE_FILE, deploy.KUBERNETES_FILE, RECORD_FILE}
    for version in ("1", "2"):  # nothing written inside a version folder
        assert not any(p.name in _top_level_files(base) for p in (base / "demo" / version).rglob("*"))
    models = cfg.parse_text(base / cfg.MODELS_CONFIG, model_server_config_pb2.ModelServerConfig)
    (entry,) = models.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("demo", "/models/demo", "tensorflow")
    assert entry.model_version_policy.latest.num_versions == 2
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}
    batching = cfg.parse_text(base / cfg.BATCHING_CONFIG, session_bundle_config_pb2.BatchingParameters)
    assert batching.num_batch_threads.value == 2
    assert batching.allowed_batch_sizes[-1] == batching.max_batch_size.value
    assert "FORCED" not in (base / cfg.BATCHING_CONFIG).read_text()
    monitoring = cfg.parse_text(base / cfg.MONITORING_CONFIG, monitoring_config_pb2.MonitoringConfig)
    assert monitoring.prometheus_config.enable
    record = json.loads((base / RECORD_FILE).read_text())
    assert record["batching_forced"] is False and record["batching"]["max_batch_size"] == batching.max_batch_size.value
    assert record["models"][0]["versions"] == [1, 2]


def _load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _flags_and_mounts(base: Path):
    composed = _load_yaml(base / deploy.COMPOSE_FILE)
    service = composed["services"]["tfserving"]
    listed = _load_yaml(base / deploy.KUBERNETES_FILE)
    deployment, svc = listed["items"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return service, deployment, svc, container


def test_deploy_files_run_the_official_image_with_exactly_these_files(base):
    assert _run(base, "--name", "demo").exit_code == 0
    service, deployment, svc, container = _flags_and_mounts(base)
    assert service["image"].startswith("tensorflow/serving:") and container["image"] == service["image"]
    assert service["entrypoint"] == ["tensorflow_model_server"] and container["command"] == service["entrypoint"]
    assert service["command"] == container["args"]
    flags = deploy.parse_flags(service["command"])
    assert set(flags) <= TF_SERVING_FLAGS, set(flags) - TF_SERVING_FLAGS
    assert flags["enable_batching"] == "true" and flags["enable_model_warmup"] == "true"
    assert (flags["port"], flags["rest_api_port"]) == ("8500", "8501")
    for name in deploy.FILE_FLAGS:
        assert deploy.container_to_host(flags[name], base).is_file(), f"--{name}={flags[name]}"
    assert service["volumes"] == [{"type": "bind", "source": ".", "target": "/models", "read_only": True}]
    assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
    assert {(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {(8500, 8500), (8501, 8501)}
    assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"].startswith("/v1/models/demo") and probe["port"] == 8501


def test_deploy_files_are_commented_yaml_whose_flags_read_the_config_files(base):
    from tensorflow_serving.config import model_server_config_pb2

    result = _run(base, "--name", "demo", "--cpus", "3", "--prometheus-path", "/metrics/here")
    assert result.exit_code == 0, result.output
    record = json.loads((base / RECORD_FILE).read_text())
    service, _, _, container = _flags_and_mounts(base)
    for name in (deploy.COMPOSE_FILE, deploy.KUBERNETES_FILE):
        text = (base / name).read_text()
        header = [line for line in text.splitlines() if line.startswith("#")]
        assert text.startswith("# Written by `seqexport serving-config`"), text[:200]
        assert any("regenerate rather than edit" in line for line in header)
        assert not text.lstrip("#").startswith("{") and "&id" not in text and "*id" not in text  # block YAML
        with pytest.raises(json.JSONDecodeError):  # real YAML now, not JSON
            json.loads(text)
    assert service["command"] == container["args"] == record["flags"]
    flags = deploy.parse_flags(service["command"])
    models = cfg.parse_text(deploy.container_to_host(flags["model_config_file"], base),
                            model_server_config_pb2.ModelServerConfig)
    assert [c.name for c in models.model_config_list.config] == ["demo"]
    batching = cfg.parse_text(deploy.container_to_host(flags["batching_parameters_file"], base),
                              session_bundle_config_pb2.BatchingParameters)
    assert batching.num_batch_threads.value == 3
    assert batching.max_batch_size.value == record["batching"]["max_batch_size"]
    monitoring = cfg.parse_text(deploy.container_to_host(flags["monitoring_config_file"], base),
                                monitoring_config_pb2.MonitoringConfig)
    assert monitoring.prometheus_config.path == "/metrics/here"
    header = (base / deploy.KUBERNETES_FILE).read_text()
    claim = _load_yaml(base / deploy.KUBERNETES_FILE)["items"][0]["spec"]["template"]["spec"]["volumes"][0]
    assert claim["persistentVolumeClaim"]["claimName"] in header  # the header names what it needs


def test_no_batching_writes_no_batching_flags_and_removes_the_old_file(base):
    assert _run(base, "--name", "demo").exit_code == 0
    assert (base / cfg.BATCHING_CONFIG).is_file()
    result = _run(base, "--name", "demo", "--no-batching")
    assert result.exit_code == 0, result.output
    assert not (base / cfg.BATCHING_CONFIG).exists()
    flags = deploy.parse_flags(_flags_and_mounts(base)[0]["command"])
    assert "enable_batching" not in flags and "batching_parameters_file" not in flags


@pytest.mark.parametrize("proven, reason", [(None, "never checked"), (False, "NOT batch independent")])
def test_batching_refused_without_proof_and_nothing_written(base, proven, reason):
    set_batch_independent(base / "demo" / "2", proven, 0.25 if proven is False else None)
    result = _run(base, "--name", "demo")
    assert result.exit_code == 2, result.output
    assert reason in _text(result) and "--force-batching" in _text(result)
    assert _top_level_files(base) == set()
    # Version 1 alone is proven: latest:1 serves version 2 only, specific:1 is fine.
    assert _run(base, "--name", "demo", "--versions", "specific:1").exit_code == 0


def test_forced_batching_is_recorded(base):
    set_batch_independent(base / "demo" / "2", None)
    result = _run(base, "--name", "demo", "--force-batching", "--json")
    assert result.exit_code == 0, result.output
    header = (base / cfg.BATCHING_CONFIG).read_text().splitlines()[0]
    assert header.startswith("# FORCED with --force-batching")
    record = json.loads((base / RECORD_FILE).read_text())
    assert record["batching_forced"] is True
    assert record["unproven"] == ["demo version 2: batch independence was never checked (manifest "
                                  "batch_independent is null)"]
    assert any("initial_state" in note for note in record["notes"])  # scalar input: unbatchable
    assert json.loads(result.stdout)["batching_forced"] is True


def test_the_old_label_form_still_works_with_a_deprecation_note(base):
    from tensorflow_serving.config import model_server_config_pb2

    result = _run(base, "--name", "demo", "--versions", "latest:2", "--label", "stable=1", "--label", "demo:canary=2")
    assert result.exit_code == 0, result.output
    assert "deprecated" in _text(result) and "MODEL:LABEL=VERSION" in _text(result)
    (entry,) = cfg.parse_text(base / cfg.MODELS_CONFIG, model_server_config_pb2.ModelServerConfig).model_config_list.config
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--name", "nope"], "has no published version"),
        (["--name", "demo", "--versions", "specific:3"], "has no version [3]"),
        (["--name", "demo", "--label", "demo:stable=1"], "not served"),
        (["--name", "demo", "--versions", "latest:2", "--label", "other:stable=1"], "not served"),
        (["--name", "demo", "--versions", "nonsense"], "--versions"),
        (["--name", "demo", "--name", "demo"], "repeats"),
        (["--name", "../x"], "not allowed"),
    ],
)
def test_bad_usage_exits_2(base, args, message):
    result = _run(base, *args)
    assert result.exit_code == 2, result.output
    assert message in _text(result)
    assert _top_level_files(base) == set()


def test_never_writes_into_a_version_folder(base):
    result = _run(base / "demo" / "1", "--name", "demo")
    assert result.exit_code == 2 and "inside a version folder" in _text(result)
    assert not (base / "demo" / "1" / cfg.MODELS_CONFIG).exists()


def test_serving_config_does_not_import_tensorflow(base):
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom exporter.cli.app import app\n"
        f"r = CliRunner().invoke(app, ['serving-config', {str(base)!r}, '--name', 'demo'])\n"
        "assert r.exit_code == 0, r.output\nprint('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_jit_export_turns_on_tf_servings_xla_flag(base):
    import dataclasses

    from exporter.artifact.paths import manifest_path
    from exporter.artifact.specs import Manifest

    assert _run(base, "--name", "demo").exit_code == 0
    compose = _load_yaml(base / deploy.COMPOSE_FILE)
    assert "xla_cpu_compilation_enabled" not in deploy.parse_flags(compose["services"]["tfserving"]["command"])
    path = manifest_path(base / "demo" / "2")
    manifest = Manifest.from_json(json.loads(path.read_text()))
    manifest = dataclasses.replace(manifest, options=dataclasses.replace(manifest.options, jit=True))
    path.write_text(json.dumps(manifest.to_json()))
    result = _run(base, "--name", "demo")
    assert result.exit_code == 0, result.output
    compose = _load_yaml(base / deploy.COMPOSE_FILE)
    flags = deploy.parse_flags(compose["services"]["tfserving"]["command"])
    assert flags["xla_cpu_compilation_enabled"] == "true"
