"""Whole-sequence scoring with Beam's `RunInference`: a model handler for a seqexport export.

TensorFlow's own handler feeds one tensor; a seqexport export's `serving_default` takes its
inputs by key (`inputs`, the other sequence, static and context inputs, and `lengths` when the
model masks), so this handler reads the keys from the manifest. Whole-sequence exports (no
`stream`) are scored the same way.

Example form: the `inputs` of one sequence `[T, F]`, or a dict by input key (no batch axis).
Sequences of one batch that differ in length are padded with the manifest's `mask_pad_value`
and fed with `lengths` when the export masks; otherwise each length is its own call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from exporter.artifact.names import DEFAULT_SIGNATURE
from serving.server import predict
from serving.server.registry import load_version
from serving.server.served import ServedVersion


class SeqExportModelHandler(ModelHandler[object, PredictionResult, ServedVersion]):
    """`RunInference` over a seqexport version folder's `serving_default`.

    Each `PredictionResult.inference` is the sequence's outputs: `[T, O]` (its own `T`, padding
    cut off), `[O]` for a last-step output, or a dict of them by output name.

    Args:
        export_dir: a version folder (`BASE/NAME/VERSION`).
        max_batch_size: most sequences per `serving_default` call.

    Example:
        >>> scores = sequences | RunInference(SeqExportModelHandler("models/demo/3"))
    """

    def __init__(self, export_dir, *, max_batch_size: int = 64):
        if max_batch_size < 1:
            raise ValueError(f"`max_batch_size` must be positive. Got: {max_batch_size}")
        self._export_dir = str(export_dir)
        self._max_batch_size = max_batch_size
        super().__init__()

    def load_model(self) -> ServedVersion:
        path = Path(self._export_dir)
        served = load_version(path.parent.name, int(path.name) if path.name.isdigit() else 0, path)
        if served.manifest is None:
            raise ValueError(f"{self._export_dir!r} has no seqexport manifest; this handler needs the export's keys.")
        return served

    def batch_elements_kwargs(self) -> Mapping:
        return {"max_batch_size": self._max_batch_size}

    def run_inference(self, batch: Sequence, model: ServedVersion, inference_args=None) -> Iterable[PredictionResult]:
        manifest = model.manifest
        feeds = [_as_feed(example) for example in batch]
        groups: dict[tuple, list[int]] = {}
        for i, feed in enumerate(feeds):
            shapes = tuple((k, v.shape[1:] if _is_sequence(manifest, k) and manifest.masked else v.shape)
                           for k, v in sorted(feed.items()))
            groups.setdefault(shapes, []).append(i)
        results: dict[int, PredictionResult] = {}
        for rows in groups.values():
            lengths = [feeds[i]["inputs"].shape[0] for i in rows]
            arrays = {name: _stack([feeds[i][name] for i in rows], manifest.mask_pad_value
                                   if _is_sequence(manifest, name) else None) for name in feeds[rows[0]]}
            if manifest.masked:
                arrays["lengths"] = np.asarray(lengths, dtype=model.views[DEFAULT_SIGNATURE].inputs["lengths"].dtype)
            _, outputs = predict.run(model, DEFAULT_SIGNATURE, arrays)
            for j, i in enumerate(rows):
                out = {key: outputs[key][j] if last else outputs[key][j, : lengths[j]]
                       for key, _, last in manifest.output_keys()}
                results[i] = PredictionResult(batch[i], out if len(out) > 1 else next(iter(out.values())),
                                              self._export_dir)
        return [results[i] for i in range(len(batch))]

    def get_metrics_namespace(self) -> str:
        return "seqexport"


def _as_feed(example) -> dict[str, np.ndarray]:
    if isinstance(example, Mapping):
        return {k: np.asarray(v) for k, v in example.items()}
    return {"inputs": np.asarray(example)}


def _is_sequence(manifest, name: str) -> bool:
    return name == "inputs" or any(i.name == name for i in manifest.sequence_inputs)


def _stack(arrays: list[np.ndarray], pad_value: float | None) -> np.ndarray:
    """Stacked on a new batch axis; sequences padded along time to the longest (`pad_value`)."""
    if pad_value is None or len({a.shape[0] for a in arrays}) == 1:
        return np.stack(arrays)
    steps = max(a.shape[0] for a in arrays)
    return np.stack([np.concatenate([a, np.full((steps - a.shape[0], *a.shape[1:]), pad_value, a.dtype)])
                     for a in arrays])
