"""Each lookup layer's vocabulary saved as a SavedModel asset, `assets/<layer>.vocabulary.txt`.

Keras builds the table of a `StringLookup`, `IntegerLookup` or `TextVectorization` from a list in
memory, which `tf.saved_model.save` writes as constants inside the graph: the words a served model
maps with can then be neither read nor diffed. TF Serving and TF Transform keep vocabularies as asset
files instead. A table initialised from a file (`tf.lookup.TextFileInitializer`, what Keras builds
for `set_vocabulary(path)`) tracks that file as a `tf.saved_model.Asset`: the save copies it into
`assets/`, and every load (TF Serving's too) reads it from there. So while an export is traced and
saved, each lookup layer reads its vocabulary from a file written for the purpose
(`vocabularies_as_assets`); afterwards it gets its list back. The verifier reads the saved file
against the layer's words (`vocabulary_checks`).

A vocabulary a line-per-token file cannot hold (a token with a line break, an empty token) or one
Keras cannot read from a file (`output_mode="tf_idf"`) stays in the graph, said in the export's notes.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from exporter.artifact.specs import CheckResult, VocabularyAsset

ASSETS_DIR = "assets"
_SUFFIX = ".vocabulary.txt"


def _lookup_layers(layers) -> list:
    import keras

    kinds = (keras.layers.StringLookup, keras.layers.IntegerLookup, keras.layers.TextVectorization)
    return [layer for layer in layers if isinstance(layer, kinds)]


def _tokens(layer) -> list[str]:
    return [str(t) for t in layer.get_vocabulary(include_special_tokens=False)]


def _why_in_graph(layer, tokens: list[str]) -> str:
    """Why `layer`'s vocabulary cannot be a file, or ""."""
    if getattr(layer, "output_mode", None) == "tf_idf":
        return "output_mode='tf_idf' (Keras reads no idf weights from a file)"
    if not tokens:
        return "it has no vocabulary (adapt it or pass `vocabulary=`)"
    odd = next((t for t in tokens if not t or re.search(r"[\r\n]", t)), None)
    if odd is not None:
        return f"its token {odd!r} cannot be one line of a text file"
    return ""


def file_name(layer_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer_name) + _SUFFIX


def digest(tokens) -> str:
    return hashlib.sha256("".join(f"{t}\n" for t in tokens).encode()).hexdigest()


@contextlib.contextmanager
def vocabularies_as_assets(layers) -> Iterator[tuple[tuple[VocabularyAsset, ...], tuple[str, ...]]]:
    """While inside, each lookup layer of `layers` reads its vocabulary from a file that a SavedModel
    saved meanwhile keeps in `assets/`. Yields (the assets, one note per vocabulary kept in the graph)."""
    found = [(layer, _tokens(layer)) for layer in _lookup_layers(layers)]
    assets, notes, switched = [], [], []
    with tempfile.TemporaryDirectory(prefix="seqexport-vocabulary-") as scratch:
        try:
            for layer, tokens in found:
                why = _why_in_graph(layer, tokens)
                if why:
                    notes.append(f"{type(layer).__name__} {layer.name!r}: vocabulary kept inside the graph, not "
                                 f"as an asset: {why}.")
                    continue
                path = Path(scratch) / file_name(layer.name)
                path.write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
                layer.set_vocabulary(str(path))
                switched.append((layer, tokens))
                assets.append(VocabularyAsset(layer=layer.name, file=path.name, words=len(tokens),
                                              sha256=digest(tokens)))
            yield tuple(assets), tuple(notes)
        finally:
            for layer, tokens in switched:  # the user's model as it was: its list, no file behind it
                layer.set_vocabulary(tokens)


def golden_words(assets: tuple[VocabularyAsset, ...], layers) -> dict[str, np.ndarray]:
    """`vocabulary/<layer>`: each asset's words, so a failed check can say the first line that differs."""
    by_name = {layer.name: layer for layer in _lookup_layers(layers)}
    return {f"vocabulary/{a.layer}": np.array([t.encode() for t in _tokens(by_name[a.layer])], dtype=object)
            for a in assets}


def vocabulary_checks(export_dir: Path, assets, golden: dict) -> list[CheckResult]:
    """One row per vocabulary asset: the file in `assets/` holds the layer's words, line for line."""
    rows = []
    for asset in assets:
        path = Path(export_dir) / ASSETS_DIR / asset.file
        label = f"{ASSETS_DIR}/{asset.file}"
        row = dict(check="vocabulary", signature="-", tensor=label)
        if not path.is_file():
            rows.append(CheckResult(**row, passed=False, message=f"{label} is missing: the SavedModel's lookup "
                                    f"table for {asset.layer!r} reads it. Re-export the model."))
            continue
        tokens = path.read_text(encoding="utf-8").splitlines()
        if digest(tokens) == asset.sha256 and len(tokens) == asset.words:
            rows.append(CheckResult(**row, passed=True, message=f"{asset.words} words, those of {asset.layer!r} "
                                    "(sha256 matches)"))
            continue
        want = [w.decode() for w in golden.get(f"vocabulary/{asset.layer}", [])]
        line = next((i for i, (a, b) in enumerate(zip(tokens, want)) if a != b), min(len(tokens), len(want)))
        got_word = tokens[line] if line < len(tokens) else "<end of file>"
        want_word = want[line] if line < len(want) else "<end of vocabulary>"
        rows.append(CheckResult(**row, passed=False, message=(
            f"{label} ({len(tokens)} words) is not the vocabulary {asset.layer!r} was exported with "
            f"({asset.words} words): line {line + 1} is {got_word!r}, expected {want_word!r}. The served model "
            "maps tokens by this file: re-export, never edit it.")))
    return rows
