"""Wire conversions: TensorProto fast path equals TensorFlow's, JSON values are checked per dtype."""

from __future__ import annotations

import numpy as np
import pytest

from serving import tensors
from serving.signatures import TensorSig
from serving.status import Code, ServingError

DTYPES = ["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
          "uint64", "bool"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_proto_fast_path_equals_tensorflows(dtype):
    import tensorflow as tf

    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    mine, theirs = tensors.to_tensor_proto(array), tf.make_tensor_proto(array)
    assert mine.dtype == theirs.dtype
    assert [d.size for d in mine.tensor_shape.dim] == [2, 3, 4]
    np.testing.assert_array_equal(tf.make_ndarray(mine), array)
    for proto in (mine, theirs):
        back = tensors.from_tensor_proto("x", proto, max_bytes=1 << 20)
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)


def test_tensor_proto_scalar_and_empty():
    for array in (np.int32(7), np.zeros((0, 5, 3), np.float32)):
        back = tensors.from_tensor_proto("x", tensors.to_tensor_proto(array), max_bytes=1024)
        assert back.shape == np.shape(array) and back.dtype == np.asarray(array).dtype


def _sig(dtype="float32", shape=(None, None, 4)):
    return TensorSig(key="x", dtype=dtype, shape=shape)


@pytest.mark.parametrize(
    "value, sig, shown",
    [
        ([[1.0, 2.0], [3.0]], _sig(), "rectangular"),
        ([["a", "b"]], _sig(), "strings"),
        ([True, False], _sig(), "booleans"),
        ([1.5], _sig("int32", (None,)), "integers"),
        ([2**31], _sig("int32", (None,)), "int32"),
        ([10**30], _sig("int64", (None,)), "rectangular"),
        ({"a": 1}, _sig(), "JSON object"),
    ],
)
def test_json_values_that_do_not_fit_are_refused(value, sig, shown):
    with pytest.raises(ServingError) as info:
        tensors.from_json("x", value, sig)
    assert info.value.code is Code.INVALID_ARGUMENT
    assert "'x'" in info.value.message and shown in info.value.message, info.value.message


def test_json_values_that_fit():
    got = tensors.from_json("x", [[[1, 2.5, float("nan"), float("inf")]]], _sig())
    assert got.dtype == np.float32 and got.shape == (1, 1, 4) and np.isnan(got[0, 0, 2])
    assert tensors.from_json("x", 3, _sig("int32", ())).dtype == np.int32
    # An empty list has no visible trailing sizes: it takes the signature's rank.
    assert tensors.from_json("x", [], _sig()).shape == (0, 0, 4)
    assert tensors.from_json("x", [[]], _sig()).shape == (1, 0, 4)
    assert tensors.to_json(np.array([[0.1]], np.float32)) == [[float(np.float32(0.1))]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_content_form_equals_make_tensor_proto(dtype):
    import tensorflow as tf

    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    mine, theirs = tensors.to_tensor_proto(array, as_content=True), tf.make_tensor_proto(array)
    # Tensor::AsProtoTensorContent always fills tensor_content (make_tensor_proto uses the typed
    # fields for bool and uint16); where both use it, the protos are equal byte for byte.
    assert mine.tensor_content and (mine == theirs or not theirs.tensor_content)
    np.testing.assert_array_equal(tf.make_ndarray(mine), array)
    typed = tensors.to_tensor_proto(array)
    assert typed.tensor_content == b"" and typed.dtype == mine.dtype


def test_strings_from_json_and_proto():
    import tensorflow as tf

    sig = _sig("string", (None, 2))
    got = tensors.from_json("x", [["a", {"b64": "AP8="}], ["\u00e9", ""]], sig)
    assert got.dtype == object and got.tolist() == [[b"a", b"\x00\xff"], ["\u00e9".encode(), b""]]
    assert tensors.from_json("x", [], sig).shape == (0, 2)
    for bad, shown in (([["a"], ["b", "c"]], "rectangular"), ([[1, "a"]], "expected strings"),
                       ([[{"b64": "!!"}, "a"]], "base64"), ([[{"b64": "AA==", "x": 1}, "a"]], "expected strings")):
        with pytest.raises(ServingError, match=shown):
            tensors.from_json("x", bad, sig)
    proto = tf.make_tensor_proto(np.array([[b"a", b"bc"]], object))
    assert tensors.from_tensor_proto("x", proto, max_bytes=100).tolist() == [[b"a", b"bc"]]


def test_json_text_is_tf_servings():
    # util/json_tensor.cc WriteDecimal and AddTensorValues.
    floats = np.array([0.4, 1.0, 1e-5, 9e6, 0.123456789, -0.0, np.nan, np.inf, -np.inf], np.float32)
    assert tensors.json_text("y", floats) == "[0.4,1.0,1e-05,9e+06,0.123456791,-0.0,NaN,Infinity,-Infinity]"
    assert tensors.json_text("y", np.array([0.1], np.float64)) == "[0.1]"
    assert tensors.json_text("y", np.array([1 / 3], np.float64)) == "[0.33333333333333331]"
    assert tensors.json_text("y", np.zeros((2, 0, 3), np.float32)) == "[[],[]]"
    assert tensors.json_text("y", np.array([[1, -2]], np.int64)) == "[[1,-2]]"
    assert tensors.json_text("y", np.array([True, False])) == "[true,false]"
    assert tensors.json_text("y_bytes", np.array([b"\x00\xff"], object)) == '[{"b64": "AP8="}]'
    assert tensors.json_text("y", np.array([b"h\xc3\xa9"], object)) == '["h\u00e9"]'
