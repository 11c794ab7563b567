"""serving.config: messages filled from specs, written with text_format, parsed back."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from exporter.artifact.errors import BadInput
from serving import config as cfg
from serving.protos import monitoring_config_pb2, session_bundle_config_pb2


@pytest.mark.parametrize(
    "text, kind, served",
    [
        ("latest", cfg.PolicyKind.LATEST, [5]),
        ("latest:2", cfg.PolicyKind.LATEST, [3, 5]),
        ("specific:1,3", cfg.PolicyKind.SPECIFIC, [1, 3]),
        ("all", cfg.PolicyKind.ALL, [1, 2, 3, 5]),
    ],
)
def test_version_policy(text, kind, served):
    policy = cfg.VersionPolicy.parse(text)
    assert policy.kind is kind
    assert policy.served([3, 1, 5, 2]) == served
    assert cfg.VersionPolicy.parse(policy.describe()) == policy
    assert policy.to_proto().WhichOneof("policy_choice") == kind.value
    assert cfg.VersionPolicy.from_proto(policy.to_proto()) == policy


@pytest.mark.parametrize("text", ["latest:0", "latest:x", "specific:", "specific:0", "some", "all:2"])
def test_version_policy_rejects(text):
    with pytest.raises(BadInput, match="--versions"):
        cfg.VersionPolicy.parse(text)


def test_labels_one_syntax_model_label_version():
    labels = cfg.VersionLabels.parse(["demo:stable=1", "demo:canary=2", "other:stable=3"])
    assert labels.by_model == {"demo": {"stable": 1, "canary": 2}, "other": {"stable": 3}}
    assert labels.deprecation_note() is None
    for bad in (["demo:stable"], ["demo:stable=x"], ["demo:1x=2"], ["demo:stable=0"], ["demo:a=1", "demo:a=2"],
                [":stable=1"], ["../x:stable=1"], ["stable=1"]):
        with pytest.raises(BadInput, match="--label"):
            cfg.VersionLabels.parse(bad)


def test_labels_old_form_applies_to_every_model_with_a_note():
    labels = cfg.VersionLabels.parse(["stable=1", "b:canary=2"], every_model=["a", "b"])
    assert labels.by_model == {"a": {"stable": 1}, "b": {"stable": 1, "canary": 2}}
    assert labels.deprecated == ("stable=1",) and "deprecated" in labels.deprecation_note()


def test_models_config_round_trip(tmp_path):
    entries = [
        cfg.ModelEntry(name="demo", base_path="/models/demo", policy=cfg.VersionPolicy.parse("specific:1,2"),
                       labels={"stable": 1, "canary": 2}),
        cfg.ModelEntry(name='odd "name"', base_path="/models/odd", policy=cfg.VersionPolicy.parse("all")),
    ]
    path = cfg.write_text(cfg.model_server_config(entries), tmp_path / cfg.MODELS_CONFIG, header="line 1\nline 2")
    text = path.read_text()
    assert text.startswith("# line 1\n# line 2\n")
    parsed = cfg.parse_text(path, model_server_config_pb2.ModelServerConfig)
    first, second = parsed.model_config_list.config
    assert (first.name, first.base_path, first.model_platform) == ("demo", "/models/demo", "tensorflow")
    assert list(first.model_version_policy.specific.versions) == [1, 2]
    assert dict(first.version_labels) == {"stable": 1, "canary": 2}
    assert second.name == 'odd "name"'  # escaped by text_format, not by us
    assert second.model_version_policy.HasField("all")
    assert not list(tmp_path.glob(".*.tmp"))


def test_config_typo_names_file_and_line(tmp_path):
    path = tmp_path / cfg.MODELS_CONFIG
    cfg.write_text(cfg.model_server_config([cfg.ModelEntry(name="demo", base_path="/models/demo")]), path)
    path.write_text(path.read_text().replace("base_path", "base_pth"))
    with pytest.raises(cfg.ConfigError, match=r"models\.config:\d+:\d+: .*base_pth") as info:
        cfg.parse_text(path, model_server_config_pb2.ModelServerConfig)
    assert info.value.exit_code == 1


@pytest.mark.parametrize(
    "parameters, expected",
    [
        (757, 128),  # a small RNN: capped
        (20_000, 128),  # 2^24 // 40_000 = 419 -> capped
        (200_000, 32),  # 2^24 // 400_000 = 41 -> 32
        (5_000_000, 8),  # floored at the minimum
    ],
)
def test_batching_choice_from_model(parameters, expected):
    choice = cfg.BatchingChoice.from_model(parameter_count=parameters, threads=3)
    assert choice.max_batch_size == expected
    assert choice.allowed_batch_sizes[-1] == choice.max_batch_size
    assert list(choice.allowed_batch_sizes) == sorted(set(choice.allowed_batch_sizes))
    assert choice.num_batch_threads == 3 and choice.max_enqueued_batches == 6
    assert set(choice.reasons) >= {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                                   "num_batch_threads", "allowed_batch_sizes"}


def test_batching_file_round_trip(tmp_path):
    choice = cfg.BatchingChoice.from_model(parameter_count=200_000, threads=4)
    path = cfg.write_text(choice.to_proto(), tmp_path / cfg.BATCHING_CONFIG, header="why")
    parsed = cfg.parse_text(path, session_bundle_config_pb2.BatchingParameters)
    assert parsed.max_batch_size.value == 32
    assert parsed.batch_timeout_micros.value == cfg.BATCH_TIMEOUT_MICROS
    assert parsed.num_batch_threads.value == 4
    assert parsed.max_enqueued_batches.value == 8
    assert list(parsed.allowed_batch_sizes) == [1, 2, 4, 8, 16, 32]
    assert parsed.pad_variable_length_inputs is False
    # The wrapper fields are written the way TF Serving's own docs show them.
    assert "max_batch_size {\n  value: 32\n}" in path.read_text()


def test_batching_choice_validates():
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        cfg.BatchingChoice(max_batch_size=16, batch_timeout_micros=0, max_enqueued_batches=1,
                           num_batch_threads=1, allowed_batch_sizes=(4, 8))
    with pytest.raises(ValueError, match="num_batch_threads"):
        cfg.BatchingChoice(max_batch_size=8, batch_timeout_micros=0, max_enqueued_batches=1,
                           num_batch_threads=0, allowed_batch_sizes=(8,))


def test_monitoring_round_trip(tmp_path):
    path = cfg.write_text(cfg.monitoring_config("/metrics"), tmp_path / cfg.MONITORING_CONFIG)
    parsed = cfg.parse_text(path, monitoring_config_pb2.MonitoringConfig)
    assert parsed.prometheus_config.enable and parsed.prometheus_config.path == "/metrics"
    assert text_format.MessageToString(parsed) in path.read_text()
    with pytest.raises(BadInput, match="must start with '/'"):
        cfg.monitoring_config("metrics")
