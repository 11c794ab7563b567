"""Tensors in and out of the wire formats: `TensorProto` (gRPC) and TF Serving's JSON (REST).

Conversions are numpy only (`tf.make_ndarray` / `tf.make_tensor_proto` are
Python, no TensorFlow op runs), and every check names the tensor key. Untrusted
input is bounded: a `TensorProto` may declare a shape far larger than the values
it carries (TensorFlow fills the rest with the last value, or zeros), so its
declared size is checked against the request limit before anything is allocated.

Outputs are written as TF Serving writes them:
- gRPC: the typed fields (`float_val`, `int_val`, `string_val`, ...), as
  `Tensor::AsProtoField` fills them, since `enable_serialization_as_tensor_content`
  is false by default (model_servers/server.h); `as_content=True` gives the
  `tensor_content` form that flag switches to.
- JSON: json_tensor.cc's `WriteDecimal`: a float is printed with `%g` (six
  digits) when that reads back as the same float32 (or float64), else with
  9 (17) digits, plus `.0` for a whole number; `NaN`, `Infinity`, `-Infinity`.
  A DT_STRING output whose key ends in `_bytes` is `{"b64": "<base64>"}`, any
  other string output a JSON string. Inputs take JSON strings and
  `{"b64": "..."}` objects for DT_STRING tensors.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
from typing import Any

import numpy as np

from serving.signatures import TensorSig
from serving.status import Code, ServingError, invalid

_INT_KINDS = "iu"
# DataType enum values of types.proto for the dtypes sent as raw little-endian bytes.
_ENUM_BY_NUMPY = {
    np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.uint8): 4,
    np.dtype(np.int16): 5, np.dtype(np.int8): 6, np.dtype(np.int64): 9, np.dtype(np.bool_): 10,
    np.dtype(np.uint16): 17, np.dtype(np.float16): 19, np.dtype(np.uint32): 22, np.dtype(np.uint64): 23,
}
_NUMPY_BY_ENUM = {enum: dtype for dtype, enum in _ENUM_BY_NUMPY.items()}
_NUMBER_KINDS = "iuf"
_STRING_ENUM = 7  # DT_STRING
_BASE64_KEY = "b64"
_BYTES_SUFFIX = "_bytes"  # json_tensor.cc's kBytesTensorNameSuffix
# The typed field `Tensor::AsProtoField` fills for each dtype (tensor.proto's comments).
_FIELD_BY_NUMPY = {
    np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val", np.dtype(np.int32): "int_val",
    np.dtype(np.int16): "int_val", np.dtype(np.int8): "int_val", np.dtype(np.uint8): "int_val",
    np.dtype(np.uint16): "int_val", np.dtype(np.int64): "int64_val", np.dtype(np.bool_): "bool_val",
    np.dtype(np.uint32): "uint32_val", np.dtype(np.uint64): "uint64_val",
}
_FIELD_BY_ENUM = {_ENUM_BY_NUMPY[dtype]: (field, dtype) for dtype, field in _FIELD_BY_NUMPY.items()}


def from_tensor_proto(key: str, proto, *, max_bytes: int) -> np.ndarray:
    """The array a request's `TensorProto` holds (DT_STRING: an object array of `bytes`).

    Raises:
        ServingError: INVALID_ARGUMENT for a malformed proto, RESOURCE_EXHAUSTED
            when its declared size is over `max_bytes`.
    """
    import tensorflow as tf

    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        raise invalid(f"input {key!r}: unknown dtype enum value {proto.dtype}.") from None
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input {key!r}: the TensorProto has an unknown rank; send its shape.")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid(f"input {key!r}: negative dimension in shape {dims}.")
    count = math.prod(dims)
    itemsize = 1 if dtype == tf.string else dtype.size
    declared = count * itemsize
    if declared > max_bytes:
        raise ServingError(
            Code.RESOURCE_EXHAUSTED,
            f"input {key!r}: shape {dims} of {dtype.name} is {declared} bytes, over the server's "
            f"request limit of {max_bytes} bytes.",
        )
    if proto.dtype == _STRING_ENUM:
        if proto.tensor_content:
            raise invalid(f"input {key!r}: a DT_STRING tensor carries its values in string_val, not tensor_content.")
        if len(proto.string_val) == count:
            array = np.empty(count, dtype=object)
            array[:] = list(proto.string_val)
            return array.reshape(dims)
    elif proto.tensor_content:
        if len(proto.tensor_content) != declared:
            raise invalid(
                f"input {key!r}: tensor_content holds {len(proto.tensor_content)} bytes, but shape {dims} "
                f"of {dtype.name} needs {declared}."
            )
        if proto.dtype in _NUMPY_BY_ENUM:  # what make_tensor_proto sends
            return np.frombuffer(proto.tensor_content, dtype=_NUMPY_BY_ENUM[proto.dtype]).reshape(dims)
    elif proto.dtype in _FIELD_BY_ENUM:
        field, numpy_dtype = _FIELD_BY_ENUM[proto.dtype]
        values = getattr(proto, field)
        if len(values) == count:  # fewer values: TensorFlow repeats the last one (make_ndarray below)
            return np.asarray(values, dtype=numpy_dtype).reshape(dims)
    try:
        return tf.make_ndarray(proto)
    except Exception as exc:  # noqa: BLE001 - any malformed proto is the client's
        raise invalid(f"input {key!r}: cannot read the TensorProto: {exc}") from None


def to_tensor_proto(array: np.ndarray, *, as_content: bool = False):
    """The `TensorProto` TF Serving answers with: typed fields (`AsProtoField`), or `tensor_content`.

    `as_content=True` is TF Serving's `--enable_serialization_as_tensor_content`
    (what `tf.make_tensor_proto` makes for numeric arrays). Strings always go in
    `string_val`; float16 in `half_val` (its bit patterns), as `AsProtoField` does.
    """
    from tensorflow.core.framework import tensor_pb2

    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "SU":
        proto = tensor_pb2.TensorProto(dtype=_STRING_ENUM)
        proto.string_val.extend(_as_bytes(v) for v in array.ravel().tolist())
    elif array.dtype in _ENUM_BY_NUMPY:
        proto = tensor_pb2.TensorProto(dtype=_ENUM_BY_NUMPY[array.dtype])
        if as_content:
            proto.tensor_content = np.ascontiguousarray(array).tobytes()
        elif array.dtype == np.float16:
            proto.half_val.extend(array.ravel().view(np.uint16).tolist())
        else:
            getattr(proto, _FIELD_BY_NUMPY[array.dtype]).extend(array.ravel().tolist())
    else:
        import tensorflow as tf

        return tf.make_tensor_proto(array)
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    return proto


def _as_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def from_json(key: str, value: Any, sig: TensorSig) -> np.ndarray:
    """The array a JSON value holds, as the signature's dtype.

    Numbers must fit the dtype: a float for an integer tensor, a string, a bool,
    a ragged list or an integer out of range is refused; NaN and Infinity (which
    TF Serving's JSON also accepts) pass through for float tensors. A DT_STRING
    tensor takes JSON strings (sent as their UTF-8 bytes) and `{"b64": "..."}`
    objects (decoded), as json_tensor.cc's `FillTensorProto`. An empty list
    takes the signature's rank (see `_empty`).
    """
    if sig.dtype == "string":
        return _strings_from_json(key, value, sig)
    if isinstance(value, dict):
        raise invalid(f"input {key!r}: got a JSON object; expected a number or a (nested) list of numbers.")
    try:
        raw = np.array(value)
    except ValueError as exc:
        raise invalid(f"input {key!r}: not a rectangular list of numbers ({_first_line(exc)}).") from None
    if raw.dtype == object:
        raise invalid(f"input {key!r}: not a rectangular list of numbers (ragged, or mixed types).")
    target = np.dtype(sig.dtype)
    if raw.size == 0:
        return _empty(raw, sig).astype(target)
    if raw.dtype.kind == "b" or raw.dtype.kind not in _NUMBER_KINDS:
        raise invalid(f"input {key!r}: expected {target.name} numbers, got {_kind_name(raw)}.")
    if target.kind in _INT_KINDS:
        if raw.dtype.kind not in _INT_KINDS:
            raise invalid(f"input {key!r}: expected {target.name} integers, got {_kind_name(raw)}.")
        info = np.iinfo(target)
        low, high = raw.min(), raw.max()
        if low < info.min or high > info.max:
            raise invalid(f"input {key!r}: values [{low}, {high}] do not fit {target.name}.")
    elif target.kind != "f":
        raise invalid(f"input {key!r}: dtype {target.name} is not supported over JSON by this server.")
    return raw.astype(target)


def is_base64_object(value: Any) -> bool:
    """`{"b64": "<string>"}` and nothing else: json_tensor.cc's `IsValBase64Object`."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_BASE64_KEY), str)


def _strings_from_json(key: str, value: Any, sig: TensorSig) -> np.ndarray:
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat: list[bytes] = []

    def walk(item, level: int) -> None:
        if isinstance(item, list):
            if level >= len(shape) or len(item) != shape[level]:
                raise invalid(f"input {key!r}: not a rectangular list of strings (ragged at depth {level}).")
            for element in item:
                walk(element, level + 1)
            return
        if level != len(shape):
            raise invalid(f"input {key!r}: not a rectangular list of strings (a value at depth {level}).")
        if isinstance(item, str):
            flat.append(item.encode())
        elif is_base64_object(item):
            try:
                flat.append(base64.b64decode(item[_BASE64_KEY], validate=True))
            except (binascii.Error, ValueError):
                raise invalid(f"input {key!r}: Unable to base64 decode {item[_BASE64_KEY][:40]!r}.") from None
        else:
            raise invalid(
                f"input {key!r}: expected strings (or {{\"b64\": ...}} objects) for a DT_STRING tensor, "
                f"got {type(item).__name__}."
            )

    walk(value, 0)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    array = array.reshape(shape)
    return _empty(array, sig) if array.size == 0 else array


def _empty(raw: np.ndarray, sig: TensorSig) -> np.ndarray:
    """JSON writes any empty tensor as `[]` (or `[[]]`...): give it the signature's rank back.

    The missing trailing sizes are the signature's static ones, 0 where it has
    none (the tensor is empty either way), so B = 0 and T = 0 work over REST too.
    """
    if sig.shape is None or raw.ndim >= len(sig.shape):
        return raw
    tail = tuple(0 if d is None else d for d in sig.shape[raw.ndim :])
    return raw.reshape(raw.shape + tail)


def to_json(array: np.ndarray) -> Any:
    """Nested lists of Python values (for callers that want objects, not TF Serving's text)."""
    return np.asarray(array).tolist()


def json_text(key: str, array: np.ndarray) -> str:
    """The JSON text TF Serving writes for one output tensor (json_tensor.cc's `AddTensorValues`)."""
    array = np.asarray(array)
    flat = array.ravel()
    kind = array.dtype.kind
    if array.dtype == object or kind in "SU":
        if key.endswith(_BYTES_SUFFIX):
            texts = ['{"b64": "' + base64.b64encode(_as_bytes(v)).decode() + '"}' for v in flat.tolist()]
        else:
            texts = [json.dumps(_as_bytes(v).decode("utf-8", "replace"), ensure_ascii=False) for v in flat.tolist()]
    elif kind == "f":
        texts = _decimal_texts(flat)
    elif kind == "b":
        texts = ["true" if v else "false" for v in flat.tolist()]
    elif kind in _INT_KINDS:
        texts = [str(v) for v in flat.tolist()]
    else:
        raise invalid(f"output {key!r}: cannot write a {array.dtype.name} tensor as JSON.")
    values = iter(texts)

    def nest(dims: tuple[int, ...]) -> str:
        if not dims:
            return next(values)
        if len(dims) == 1:
            return "[" + ",".join(itertools.islice(values, dims[0])) + "]"
        return "[" + ",".join(nest(dims[1:]) for _ in range(dims[0])) + "]"

    return nest(array.shape)


def _decimal_texts(flat: np.ndarray) -> list[str]:
    """json_tensor.cc's `WriteDecimal` for each value: `%g`, else max_digits10 digits; `.0` for whole numbers."""
    digits = 17 if flat.dtype == np.float64 else 9
    parse = flat.dtype.type  # reads text as this dtype, as absl::SimpleAtof does for float
    texts = []
    for value in flat.astype(np.float64).tolist():
        if value != value:
            texts.append("NaN")
            continue
        if value in (math.inf, -math.inf):
            texts.append("Infinity" if value > 0 else "-Infinity")
            continue
        text = "%g" % value
        if parse(text) != value:
            text = "%.*g" % (digits, value)
        if "." not in text and "e" not in text:
            text += ".0"
        texts.append(text)
    return texts


def _kind_name(array: np.ndarray) -> str:
    return {"b": "booleans", "f": "floats", "i": "integers", "u": "integers", "U": "strings", "S": "strings"}.get(
        array.dtype.kind, array.dtype.name
    )


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
