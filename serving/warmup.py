"""Read `assets.extra/tf_serving_warmup_requests` as TF Serving does (`exporter.warmup` writes it).

A record that fails to parse fails the whole load in TF Serving; the errors here
name the record. `serving.server.warmup_replay` runs the records, and
`serving.tfserving.check` checks them against the goldens.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf.message import DecodeError

from exporter.artifact.errors import SeqExportError
from exporter.artifact.paths import MAX_WARMUP_RECORDS, WARMUP_FILE


class WarmupError(SeqExportError):
    """The warmup file cannot be read as TF Serving reads it (exit 1: TF Serving would not load the version)."""

    exit_code = 1


def warmup_file(export_dir: Path) -> Path:
    return Path(export_dir) / WARMUP_FILE


def read_warmup(path: Path, *, max_records: int = MAX_WARMUP_RECORDS) -> list:
    """The `PredictionLog`s of a warmup file, read with TF's TFRecord reader (CRCs checked).

    Raises:
        WarmupError: the file is not a TFRecord, a record is corrupt or is not a
            `PredictionLog`, or there are more than TF Serving accepts. The
            message names the record.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
            try:
                log = prediction_log_pb2.PredictionLog.FromString(record)
            except DecodeError as exc:
                raise WarmupError(
                    f"{path}: record {index} is not a PredictionLog ({exc}); TF Serving fails the "
                    "load with 'Failed to parse warmup record'. Re-export, or delete the file."
                ) from None
            logs.append(log)
            if len(logs) > max_records:
                raise WarmupError(f"{path}: more than {max_records} records; TF Serving refuses the file.")
    except tf.errors.OpError as exc:
        raise WarmupError(
            f"{path}: record {len(logs)} is unreadable as TFRecord ({type(exc).__name__}: "
            f"{exc.message}); TF Serving fails the load. Re-export, or delete the file."
        ) from None
    return logs
