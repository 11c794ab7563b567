"""A version as the server holds it once loaded: what `predict`, warmup replay and the APIs read."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

from serving.signatures import SignatureView


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServedVersion:
    """A loaded version: its signatures (as TF Serving reports them) and callables.

    Attributes:
        name: model name.
        version: version number.
        path: the version folder.
        signature_defs: the `serve` MetaGraph's SignatureDef protos, by name.
        views: the same as `SignatureView`s (keys, dtypes, shapes).
        functions: the loaded concrete functions, by signature name.
        manifest: the seqexport `Manifest`, or None for a SavedModel seqexport did not write.
        loaded: the object `tf.saved_model.load` returned (keeps the variables alive).
    """

    name: str
    version: int
    path: Path
    signature_defs: Mapping
    views: Mapping[str, SignatureView]
    functions: Mapping[str, Callable]
    manifest: object | None
    loaded: object
