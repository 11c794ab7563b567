"""One signature of a reloaded export as a standalone TF function with its weights frozen in.

Both converters start here. Freezing first (variables folded into constants) is
what makes LiteRT work: its converter does not freeze Keras 3 variables and then
keeps `VAR_HANDLE`/`READ_VARIABLE` ops with no initializer, which silently return
garbage (NaN, 1e30) at run time. A frozen function has no variables to lose.

A whole-sequence signature also gets a static batch here on request: LiteRT can
lower the `TensorList` ops of the unroll only when their element shape is static,
and the SavedModel holds `[-1, ...]` for it (`'tf.TensorListReserve' op requires
element_shape to be static`). T stays dynamic.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path

from exporter.artifact.errors import BadInput
from exporter.artifact.golden_io import load as load_golden
from exporter.artifact.manifest import read_manifest
from exporter.artifact.names import unfused_name
from exporter.artifact.paths import SAVED_MODEL_FILE, golden_path, is_saved_model_dir, manifest_path
from exporter.artifact.specs import Manifest

# Which input of each TensorList op is its element shape (tensorflow/core/ops/list_ops.cc).
_ELEMENT_SHAPE_INPUT = {
    "TensorListReserve": 0,
    "EmptyTensorList": 0,
    "TensorListFromTensor": 1,
    "TensorListGetItem": 2,
    "TensorListStack": 1,
    "TensorListGather": 2,
    "TensorListPopBack": 1,
    "TensorListConcatV2": 1,
}


@dataclasses.dataclass(frozen=True)
class LoadedExport:
    """An export version folder, reloaded: the TF module, its manifest and goldens."""

    path: Path
    manifest: Manifest
    golden: dict
    module: object

    def signature(self, name: str):
        signatures = self.module.signatures
        if name not in signatures:
            raise BadInput(
                f"Export {str(self.path)!r} has no signature {name!r}. Available: {sorted(signatures)}"
            )
        return signatures[name]

    def convertible_signature(self, name: str):
        """What a converter reads for signature `name`: its while_loop twin when it is fused
        (neither LiteRT nor tf2onnx knows TF's `BlockLSTM`), else the signature itself."""
        twin = unfused_name(name)
        if self.manifest.options.fused and twin in self.module.signatures:
            return self.module.signatures[twin]
        return self.signature(name)


def load_export(export_dir: Path) -> LoadedExport:
    """Reloads an export (read-only).

    Raises:
        BadInput: not a seqexport version folder (no SavedModel, manifest or golden).
    """
    import tensorflow as tf

    export_dir = Path(export_dir)
    if not is_saved_model_dir(export_dir):
        raise BadInput(f"{str(export_dir)!r} is not a SavedModel directory (no {SAVED_MODEL_FILE} in it).")
    for path in (manifest_path(export_dir), golden_path(export_dir)):
        if not path.is_file():
            raise BadInput(
                f"{str(export_dir)!r} has no {path.relative_to(export_dir)}: it was not made by seqexport, "
                "so there is nothing to check a conversion against. Export it with `seqexport export`."
            )
    return LoadedExport(
        path=export_dir,
        manifest=read_manifest(export_dir),
        golden=load_golden(golden_path(export_dir)),
        module=tf.saved_model.load(str(export_dir)),
    )


def input_names(function) -> list[str]:
    """The signature's input keys in a fixed (sorted) order."""
    return sorted(function.structured_input_signature[1])


def custom_gradient_ops(function) -> list[str]:
    """Names of the ops in `function`'s graph that carry a `tf.custom_gradient`."""
    graph_def = function.graph.as_graph_def()
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    return sorted({n.name for n in nodes if "_gradient_op_type" in n.attr})


def _patch_element_shapes(nodes, batch: int) -> int:
    """Sets dim 0 of every TensorList element-shape constant in `nodes` to `batch`."""
    import tensorflow as tf

    by_name = {n.name: n for n in nodes}
    patched = 0
    for node in nodes:
        position = _ELEMENT_SHAPE_INPUT.get(node.op)
        if position is None or position >= len(node.input):
            continue
        source = by_name.get(node.input[position].split(":")[0].lstrip("^"))
        if source is None or source.op != "Const":
            continue
        shape = tf.make_ndarray(source.attr["value"].tensor)
        if shape.ndim == 1 and shape.size and shape[0] == -1:
            shape = shape.copy()
            shape[0] = batch
            source.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(shape))
            patched += 1
    return patched


def _rename_functions(graph_def) -> None:
    """Gives every library function a fresh name, so the patched graph can be imported
    next to the one it came from (TF refuses two different functions of one name)."""
    suffix = f"_seqexport_{uuid.uuid4().hex[:8]}"
    renamed = {f.signature.name: f.signature.name + suffix for f in graph_def.library.function}

    def fix(nodes):
        for node in nodes:
            for attr in node.attr.values():
                if attr.HasField("func") and attr.func.name in renamed:
                    attr.func.name = renamed[attr.func.name]
                for func in attr.list.func:
                    if func.name in renamed:
                        func.name = renamed[func.name]

    fix(graph_def.node)
    for function in graph_def.library.function:
        function.signature.name = renamed[function.signature.name]
        fix(function.node_def)
    for gradient in graph_def.library.gradient:
        gradient.function_name = renamed.get(gradient.function_name, gradient.function_name)


def frozen_function(
    function, *, batch: int | None = None, output_name: Callable[[str], str] = lambda key: key
):
    """`function` with its variables as constants, named inputs and a dict of named outputs.

    Args:
        function: a signature of a reloaded SavedModel (`LoadedExport.signature`).
        batch: fix the batch dimension of every input (and of the unroll's TensorList
            element shapes) to this size; None keeps it dynamic.
        output_name: the output key to give each of the signature's output keys.

    Returns:
        A concrete function without captured variables; inputs named like the
        signature's, in `input_names` order.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    keys = sorted(function.structured_outputs)  # the order tf.nest flattens a dict in
    # Functional control flow (While, not Enter/Exit) is what both converters read.
    frozen = convert_variables_to_constants_v2(function, lower_control_flow=False)
    graph_def = frozen.graph.as_graph_def()
    if batch is not None:
        for node in graph_def.node:
            dims = node.attr["shape"].shape.dim if node.op == "Placeholder" else ()
            if dims and dims[0].size == -1:
                dims[0].size = batch
        _patch_element_shapes(graph_def.node, batch)
        for library_function in graph_def.library.function:
            _patch_element_shapes(library_function.node_def, batch)
    _rename_functions(graph_def)
    feeds = [t.name for t in frozen.inputs]
    fetches = [t.name for t in frozen.outputs]
    imported = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    pruned = imported.prune(
        [imported.graph.get_tensor_by_name(n) for n in feeds],
        [imported.graph.get_tensor_by_name(n) for n in fetches],
    )
    by_name = {t.name.split(":")[0]: t for t in frozen.inputs}
    order = input_names(function)
    if sorted(by_name) != order:
        raise ValueError(f"frozen inputs {sorted(by_name)} differ from the signature's {order}")
    specs = []
    for name in order:
        shape = by_name[name].shape
        if batch is not None and shape.rank:
            shape = tf.TensorShape([batch, *shape[1:]])
        specs.append(tf.TensorSpec(shape, by_name[name].dtype, name=name))
    position = {name: feeds.index(by_name[name].name) for name in order}

    def named(*args):
        ordered = [None] * len(args)
        for name, arg in zip(order, args):
            ordered[position[name]] = arg
        return {output_name(k): v for k, v in zip(keys, pruned(*ordered))}

    return tf.function(named, input_signature=specs, autograph=False).get_concrete_function()
