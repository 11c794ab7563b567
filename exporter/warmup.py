"""`assets.extra/tf_serving_warmup_requests`: one `PredictRequest` per signature, from the goldens.

TF Serving replays this TFRecord of `PredictionLog`s right after loading a
version and before marking it AVAILABLE, so the first real request does not pay
for lazy initialisation. A record that fails to parse or to run fails the whole
load, hence the care below.

Which signatures get a record: every signature whose inputs all have a batch
dimension. A signature with a scalar input (`initial_state`'s `batch_size`) gets
none: with `--enable_batching` TF Serving wraps every signature in its batching
session, which rejects rank-0 inputs ("Batching Run() input tensors must have at
least one dimension", tensorflow_serving/batching/batching_util.h), and the
warmup is written at export time, before anyone knows whether batching will be on.
Asking for fewer outputs (`output_filter`) does not get such a record past the
batcher: warmup runs `RunPredict` on the wrapped session, and `WrapSessionForBatching`
(servables/tensorflow/bundle_factory_util.cc) gives `BatchingSession` a default
scheduler creator, so a Run matching no signature's tensors gets a scheduler of its
own (`BatchingSession::InternalRun`), which rejects the scalar all the same.

Written at export time (`exporter.pipeline.write_export`), so a version folder is
complete the moment it is published; `serving.warmup` reads it as TF Serving does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from exporter.artifact.paths import WARMUP_FILE
from exporter.artifact.specs import Manifest


def warmup_signatures(manifest: Manifest, golden: dict[str, np.ndarray]) -> list[str]:
    """Signatures that get a warmup record: golden inputs exist and none is a scalar."""
    names = []
    for sig in manifest.signatures:
        keys = [f"{sig.name}/in/{t.name}" for t in sig.inputs]
        if not keys or not all(k in golden for k in keys):
            continue
        if any(np.ndim(golden[k]) == 0 for k in keys):
            continue
        names.append(sig.name)
    return names


def predict_requests(manifest: Manifest, golden: dict[str, np.ndarray], *, model_name: str | None = None):
    """One `PredictRequest` per warmup signature, inputs taken from `<sig>/in/<key>`."""
    requests = []
    for name in warmup_signatures(manifest, golden):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name or manifest.name
        request.model_spec.signature_name = name
        for tensor in manifest.signature(name).inputs:
            request.inputs[tensor.name].CopyFrom(tf.make_tensor_proto(golden[f"{name}/in/{tensor.name}"]))
        requests.append(request)
    return requests


def write_warmup(export_dir: Path, manifest: Manifest, golden: dict[str, np.ndarray]) -> Path:
    """Writes `export_dir/assets.extra/tf_serving_warmup_requests`; returns its path."""
    path = Path(export_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in predict_requests(manifest, golden):
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path
