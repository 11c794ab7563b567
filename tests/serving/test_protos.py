"""serving.protos: same schema as TF Serving's, generated code in sync with the .proto files."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor, text_format

from serving.protos import build, monitoring_config_pb2, session_bundle_config_pb2

F = descriptor.FieldDescriptor
# (name, number, label, type, message type) as declared by tensorflow/serving@9d981c5 in
# tensorflow_serving/servables/tensorflow/session_bundle_config.proto and
# tensorflow_serving/config/monitoring_config.proto.
BATCHING_FIELDS = [
    ("max_batch_size", 1, "optional", F.TYPE_MESSAGE, "google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, "optional", F.TYPE_MESSAGE, "google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, "optional", F.TYPE_MESSAGE, "google.protobuf.Int64Value"),
    ("num_batch_threads", 4, "optional", F.TYPE_MESSAGE, "google.protobuf.Int64Value"),
    ("thread_pool_name", 5, "optional", F.TYPE_MESSAGE, "google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, "repeated", F.TYPE_INT64, None),
    ("pad_variable_length_inputs", 7, "optional", F.TYPE_BOOL, None),
    ("enable_large_batch_splitting", 8, "optional", F.TYPE_MESSAGE, "google.protobuf.BoolValue"),
    ("max_execution_batch_size", 9, "optional", F.TYPE_MESSAGE, "google.protobuf.Int64Value"),
]
PROMETHEUS_FIELDS = [("enable", 1, "optional", F.TYPE_BOOL, None), ("path", 2, "optional", F.TYPE_STRING, None)]
MONITORING_FIELDS = [
    ("prometheus_config", 1, "optional", F.TYPE_MESSAGE, "tensorflow.serving.PrometheusConfig"),
]


def _fields(message_class):
    out = []
    for f in message_class.DESCRIPTOR.fields:
        label = "repeated" if f.is_repeated else "optional"
        out.append((f.name, f.number, label, f.type, f.message_type.full_name if f.message_type else None))
    return sorted(out, key=lambda row: row[1])


@pytest.mark.parametrize(
    "message_class, full_name, expected",
    [
        (session_bundle_config_pb2.BatchingParameters, "tensorflow.serving.BatchingParameters", BATCHING_FIELDS),
        (monitoring_config_pb2.PrometheusConfig, "tensorflow.serving.PrometheusConfig", PROMETHEUS_FIELDS),
        (monitoring_config_pb2.MonitoringConfig, "tensorflow.serving.MonitoringConfig", MONITORING_FIELDS),
    ],
)
def test_schema_matches_tf_serving(message_class, full_name, expected):
    assert message_class.DESCRIPTOR.full_name == full_name
    assert _fields(message_class) == sorted(expected, key=lambda row: row[1])


def test_generated_code_has_not_drifted(tmp_path):
    written = build.generate(tmp_path)
    assert len(written) == len(build.PROTOS)
    for path in written:
        committed = build.REPO_ROOT / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is not committed; run `python -m serving.protos.build`"
        assert path.read_bytes() == committed.read_bytes(), (
            f"{committed.name} differs from what protoc generates from its .proto: run "
            "`python -m serving.protos.build` and commit the result"
        )


def test_drift_is_detected(tmp_path, monkeypatch):
    """The drift test can fail: a changed .proto generates different code."""
    copy = tmp_path / "repo" / "serving" / "protos"
    copy.mkdir(parents=True)
    for name in build.PROTOS:
        text = (build.PACKAGE_DIR / name).read_text()
        (copy / name).write_text(text.replace("max_execution_batch_size = 9", "max_execution_batch_size = 10"))
    monkeypatch.setattr(build, "PACKAGE_DIR", copy)
    monkeypatch.setattr(build, "REPO_ROOT", tmp_path / "repo")
    out = tmp_path / "out"
    changed = {p.name: p.read_bytes() for p in build.generate(out)}
    original = (Path(session_bundle_config_pb2.__file__)).read_bytes()
    assert changed["session_bundle_config_pb2.py"] != original


def test_tf_serving_documented_batching_file_parses():
    """The example of TF Serving's batching guide (wrapper fields as `{ value: N }`)."""
    text = """
    max_batch_size { value: 128 }
    batch_timeout_micros { value: 0 }
    max_enqueued_batches { value: 1000000 }
    num_batch_threads { value: 8 }
    """
    params = text_format.Parse(text, session_bundle_config_pb2.BatchingParameters())
    assert params.max_batch_size.value == 128
    assert params.HasField("batch_timeout_micros") and params.batch_timeout_micros.value == 0
    assert not params.HasField("thread_pool_name")


def test_wire_format_round_trip():
    params = session_bundle_config_pb2.BatchingParameters()
    params.max_batch_size.value = 32
    params.allowed_batch_sizes.extend([8, 16, 32])
    params.enable_large_batch_splitting.value = True
    again = session_bundle_config_pb2.BatchingParameters.FromString(params.SerializeToString())
    assert again == params
    monitoring = monitoring_config_pb2.MonitoringConfig()
    monitoring.prometheus_config.enable = True
    monitoring.prometheus_config.path = "/metrics"
    assert text_format.Parse(text_format.MessageToString(monitoring), monitoring_config_pb2.MonitoringConfig()) == monitoring


def test_typo_in_a_field_name_is_rejected():
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        text_format.Parse("max_batch_sise { value: 1 }", session_bundle_config_pb2.BatchingParameters())
