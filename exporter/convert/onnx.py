"""Convert one signature of an export to an ONNX model (tf2onnx, opset 17).

The function is frozen first (`graph.frozen_function`), like for LiteRT. Both the
step and the whole-sequence `stream` (a `Loop`) convert with dynamic batch and
time. New states are named `<state>_next` (`exporter.convert.runtimes.state_output_name`):
an ONNX graph cannot give an input and an output the same name.

tf2onnx keeps going when it meets an op it cannot map and leaves the TF op in the
graph; `unsupported_ops` finds those so the error names them.
"""

from __future__ import annotations

import contextlib
import logging

from exporter.artifact.errors import ConversionFailed
from exporter.convert.graph import frozen_function
from exporter.convert.runtimes import NON_STATE_KEYS, state_output_name

OPSET = 17


@contextlib.contextmanager
def _quiet_tf2onnx():
    """tf2onnx logs every op it maps (and every one it cannot) at WARNING/ERROR."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def unsupported_ops(model) -> list[str]:
    """Op types in `model` (subgraphs included) that no ONNX opset defines: TF ops left behind."""
    import onnx

    bad = set()
    for graph in _graphs(model.graph):
        for node in graph.node:
            if not onnx.defs.has(node.op_type, node.domain or ""):
                bad.add(node.op_type)
    return sorted(bad)


def output_name(key: str, states=None) -> str:
    """The ONNX output name of signature output `key`: `<state>_next` for a state, else `key`.

    `states`: the export's state names; without them, every key but the signature's own
    (`y`, `outputs`, ...) is taken for a state (an export with one output).
    """
    if states is not None:
        return state_output_name(key) if key in states else key
    return key if key in NON_STATE_KEYS else state_output_name(key)


def convert_function(function, *, what: str, doc: str = "") -> bytes:
    """A serialized ONNX model of a frozen concrete function.

    Raises:
        ConversionFailed: naming the TF op(s) tf2onnx could not map.
    """
    import tensorflow as tf
    import tf2onnx

    specs = list(function.structured_input_signature[0])
    wrapper = tf.function(function, input_signature=specs, autograph=False)
    try:
        with _quiet_tf2onnx():
            model, _ = tf2onnx.convert.from_function(wrapper, input_signature=specs, opset=OPSET)
    except Exception as exc:  # noqa: BLE001  tf2onnx raises several unrelated types
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionFailed(f"tf2onnx cannot convert {what}: {line}") from None
    missing = unsupported_ops(model)
    if missing:
        raise ConversionFailed(
            f"ONNX cannot express {what}: TF op(s) {', '.join(missing)} have no ONNX "
            f"(opset {OPSET}) equivalent in tf2onnx."
        )
    model.doc_string = doc
    return model.SerializeToString()


def convert_signature(loaded, signature: str) -> bytes:
    """Converts `signature` of a `graph.LoadedExport` (dynamic batch and time)."""
    what = f"signature {signature!r} of {loaded.manifest.name!r}"
    states = frozenset(s.name for s in loaded.manifest.states)
    function = frozen_function(loaded.convertible_signature(signature),
                               output_name=lambda key: output_name(key, states))
    doc = f"seqexport: signature {signature!r} of {loaded.manifest.name!r}"
    return convert_function(function, what=what, doc=doc)
