"""Warmup records: written at export time from the goldens, read back as TF Serving reads them."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from exporter import warmup as exporter_warmup
from exporter.artifact import golden_io
from exporter.artifact.paths import WARMUP_FILE, golden_path
from serving import warmup


def test_published_version_has_one_record_per_batchable_signature(demo_export):
    path = demo_export.path / WARMUP_FILE
    assert path.is_file()
    logs = warmup.read_warmup(path)
    golden = golden_io.load(golden_path(demo_export.path))
    expected = [s.name for s in demo_export.manifest.signatures if s.name != "initial_state"]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == expected
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "demo"
        name = request.model_spec.signature_name
        assert set(request.inputs) == {t.name for t in demo_export.manifest.signature(name).inputs}
        for key, proto in request.inputs.items():
            np.testing.assert_array_equal(tf.make_ndarray(proto), golden[f"{name}/in/{key}"])


def test_scalar_input_signatures_get_no_record(demo_export):
    golden = golden_io.load(golden_path(demo_export.path))
    assert np.ndim(golden["initial_state/in/batch_size"]) == 0
    assert "initial_state" not in exporter_warmup.warmup_signatures(demo_export.manifest, golden)


def test_truncated_file_is_a_clear_error(tmp_path, demo_export):
    data = (demo_export.path / WARMUP_FILE).read_bytes()
    broken = tmp_path / "tf_serving_warmup_requests"
    broken.write_bytes(data[: len(data) - 7])
    with pytest.raises(warmup.WarmupError, match=r"record \d+ is unreadable as TFRecord") as info:
        warmup.read_warmup(broken)
    assert info.value.exit_code == 1


def test_record_that_is_not_a_prediction_log(tmp_path):
    path = tmp_path / "tf_serving_warmup_requests"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(b"")  # an empty PredictionLog is valid protobuf
        writer.write(b"\xff\xff\xff\xff")  # not a protobuf message at all
    with pytest.raises(warmup.WarmupError, match=r"record 1 is not a PredictionLog"):
        warmup.read_warmup(path)


def test_too_many_records(tmp_path):
    path = tmp_path / "tf_serving_warmup_requests"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for _ in range(4):
            writer.write(b"")
    with pytest.raises(warmup.WarmupError, match="more than 3 records"):
        warmup.read_warmup(path, max_records=3)


def test_several_outputs_get_records_that_return_every_output(several_output_exports):
    """Records come from the goldens per signature, so several outputs need nothing special."""
    export_dir = several_output_exports["dict_of_outputs"].path
    loaded = tf.saved_model.load(str(export_dir))
    logs = warmup.read_warmup(export_dir / WARMUP_FILE)
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == ["serving_default", "stream", "step"]
    for log in logs:
        request = log.predict_log.request
        feed = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**feed)
        assert {"scores", "summary"} <= set(outputs)
