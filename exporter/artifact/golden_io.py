"""`golden.npz`: the reference arrays an export is checked against, read and written without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np

# npz has no bfloat16: such arrays are stored as float32 (exact) and their keys listed here.
_BFLOAT16_KEYS = "__bfloat16_keys__"


def save(golden: dict[str, np.ndarray], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bfloat16 = sorted(k for k, v in golden.items() if np.asarray(v).dtype.name == "bfloat16")
    arrays = {k: (np.asarray(v, np.float32) if k in bfloat16 else v) for k, v in golden.items()}
    # Text (an object array of bytes, as TF hands strings over) as fixed-width bytes: npz without pickles.
    arrays = {k: (np.asarray(v, dtype=bytes) if np.asarray(v).dtype == object else v) for k, v in arrays.items()}
    if bfloat16:
        arrays[_BFLOAT16_KEYS] = np.array(bfloat16)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        golden = {k: data[k] for k in data.files}
    bfloat16 = golden.pop(_BFLOAT16_KEYS, np.array([], str))
    if bfloat16.size:
        for key in bfloat16.tolist():
            golden[key] = golden[key].astype(ml_dtypes.bfloat16)
    return golden
