"""`exporter.vocabulary`: lookup layers read their vocabulary from a file while an export is traced and
saved, then get their list back; what a file cannot hold stays in the graph, said."""

from __future__ import annotations

import keras
import numpy as np

from exporter.vocabulary import digest, vocabularies_as_assets


def _from_file(layer) -> bool:
    return type(layer.lookup_table._initializer).__name__ == "TextFileInitializer"


def test_layers_read_a_file_inside_and_their_own_list_after():
    words = ["the", "cat", "sat"]
    lookup = keras.layers.StringLookup(vocabulary=words, name="lookup")
    ints = keras.layers.IntegerLookup(vocabulary=np.array([7, 3, 11]), name="ints")
    probe = np.array([["cat", "dog", "the"]])
    before = np.asarray(lookup(probe)), np.asarray(ints(np.array([[11, 3, 5]])))
    with vocabularies_as_assets([lookup, ints, keras.layers.Dense(2)]) as (assets, notes):
        assert [(a.layer, a.file, a.words) for a in assets] == [
            ("lookup", "lookup.vocabulary.txt", 3), ("ints", "ints.vocabulary.txt", 3)]
        assert assets[0].sha256 == digest(words) and not notes
        assert _from_file(lookup) and _from_file(ints)  # what tf.saved_model keeps as an asset
        during = np.asarray(lookup(probe)), np.asarray(ints(np.array([[11, 3, 5]])))
    assert not _from_file(lookup) and not _from_file(ints)  # no table left on a deleted file
    after = np.asarray(lookup(probe)), np.asarray(ints(np.array([[11, 3, 5]])))
    for b, d, a in zip(before, during, after):
        np.testing.assert_array_equal(b, d)
        np.testing.assert_array_equal(b, a)
    assert lookup.get_vocabulary(include_special_tokens=False) == words


def test_what_a_file_cannot_hold_stays_in_the_graph_and_is_said():
    tfidf = keras.layers.StringLookup(output_mode="tf_idf", vocabulary=["a", "b"], idf_weights=[0.5, 0.2],
                                      name="weighted")
    broken = keras.layers.StringLookup(vocabulary=["one line", "two\nlines"], name="multiline")
    with vocabularies_as_assets([tfidf, broken]) as (assets, notes):
        assert assets == ()
    assert [n.split(":")[0] for n in notes] == ["StringLookup 'weighted'", "StringLookup 'multiline'"]
    assert "tf_idf" in notes[0] and "'two\\nlines' cannot be one line" in notes[1]
