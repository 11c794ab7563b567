"""Run one Predict on a loaded version: check the inputs, call the signature, return arrays.

Shared by the gRPC and REST front ends, so both answer a bad request the same
way and name the tensor at fault. Checks that hold for any SavedModel (keys,
dtypes, ranks, static sizes) always run; an export made by seqexport (it has a
manifest) also gets the checks its contract allows: every input shares the
batch size, `lengths` lies in [0, T], and T = 0 returns the states unchanged
(the exported `while_loop` cannot stack an empty output, so the server answers
that case itself, from the signature's shapes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from exporter.artifact.names import DEFAULT_SIGNATURE
from serving.server.served import ServedVersion
from serving.signatures import SignatureView, TensorSig
from serving.status import Code, ServingError, failed_precondition, invalid

_MAX_TF_MESSAGE = 600


def signature_view(served: ServedVersion, signature_name: str, *, rest: bool = False) -> SignatureView:
    """The signature a request names ('' means `serving_default`, as in TF Serving).

    Raises:
        ServingError: an unknown name is FAILED_PRECONDITION over gRPC
            (predict_util.cc's `RunPredict`) and INVALID_ARGUMENT over REST
            (http_rest_api_handler.cc's `GetInfoMap`, which looks it up first);
            both are HTTP 400.
    """
    name = signature_name or DEFAULT_SIGNATURE
    view = served.views.get(name)
    if view is None or name not in served.functions:
        available = f" Model {served.name!r} version {served.version} has {sorted(served.functions)}."
        if rest:
            raise invalid(f'Serving signature name: "{name}" not found in signature def.{available}')
        raise failed_precondition(f'Serving signature key "{name}" not found.{available}')
    return view


def check_inputs(served: ServedVersion, view: SignatureView, arrays: Mapping[str, np.ndarray]) -> None:
    """Raises INVALID_ARGUMENT naming the first input that does not fit the signature."""
    sent, expected = set(arrays), set(view.inputs)
    if sent != expected:
        missing, extra = sorted(expected - sent), sorted(sent - expected)
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        raise invalid(
            f"inputs of signature {view.name!r} do not match: {'; '.join(parts)}. "
            f"It takes exactly {sorted(expected)}."
        )
    for key in sorted(arrays):
        _check_one(view.name, view.inputs[key], arrays[key])
    if served.manifest is not None:
        _check_batch(view, arrays)
        _check_lengths(view, arrays)


def _check_one(signature: str, sig: TensorSig, array: np.ndarray) -> None:
    if sig.dtype == "string":
        if array.dtype != object and array.dtype.kind not in "SU":
            raise invalid(f"input {sig.key!r} of signature {signature!r} must be string; got {array.dtype.name}.")
    elif array.dtype.name != sig.dtype:
        raise invalid(
            f"input {sig.key!r} of signature {signature!r} must be {sig.dtype}; got {array.dtype.name}."
        )
    if sig.shape is None:
        return
    shape = array.shape
    if len(shape) != len(sig.shape) or any(want is not None and want != got for want, got in zip(sig.shape, shape)):
        raise invalid(
            f"input {sig.key!r} of signature {signature!r} has shape {list(shape)}; expected "
            f"{sig.shape_text()} (-1: any size)."
        )


def _batched(view: SignatureView) -> list[str]:
    return [k for k, s in sorted(view.inputs.items()) if s.shape and s.shape[0] is None]


def _check_batch(view: SignatureView, arrays: Mapping[str, np.ndarray]) -> None:
    keys = _batched(view)
    if len(keys) < 2:
        return
    sizes = [arrays[k].shape[0] for k in keys]
    usual = max(set(sizes), key=sizes.count)  # name the odd one out, not the first key
    reference = keys[sizes.index(usual)]
    for key, size in zip(keys, sizes):
        if size != usual:
            raise invalid(
                f"input {key!r} of signature {view.name!r} has batch size {size} but {reference!r} has "
                f"{usual}; every input shares the batch dimension."
            )


def _roles(view: SignatureView) -> tuple[str | None, str | None, list[str]]:
    """(sequence key, lengths key, state keys) of a seqexport signature; None where absent."""
    states = sorted(set(view.inputs) & set(view.outputs))
    rest = [s for k, s in view.inputs.items() if k not in states]
    lengths = [s.key for s in rest if s.shape is not None and len(s.shape) == 1 and s.dtype.startswith("int")]
    sequence = [
        s.key for s in rest
        if s.key not in lengths and s.shape is not None and len(s.shape) >= 2 and s.shape[1] is None
    ]
    if len(sequence) > 1 and "inputs" in sequence:  # several sequence inputs: `inputs` is the main one
        sequence = ["inputs"]
    return (sequence[0] if len(sequence) == 1 else None, lengths[0] if len(lengths) == 1 else None, states)


def _check_lengths(view: SignatureView, arrays: Mapping[str, np.ndarray]) -> None:
    sequence, lengths, _ = _roles(view)
    if sequence is None or lengths is None:
        return
    steps = arrays[sequence].shape[1]
    values = arrays[lengths]
    bad = np.flatnonzero((values < 0) | (values > steps))
    if bad.size:
        row = int(bad[0])
        raise invalid(
            f"input {lengths!r} of signature {view.name!r}: {lengths}[{row}] = {int(values[row])} is "
            f"outside [0, T={steps}] (T from {sequence!r})."
        )


def _empty_sequence(served: ServedVersion, view: SignatureView, arrays: Mapping[str, np.ndarray]):
    """Outputs for T = 0: states pass through (or are zero), time-major outputs are empty."""
    sequence, _, states = _roles(view)
    batch = arrays[sequence].shape[0]
    manifest_states = {s.name for s in served.manifest.states}
    result = {}
    for key, sig in view.outputs.items():
        if key in states:
            result[key] = np.array(arrays[key])
        elif key in manifest_states and sig.shape and all(d is not None for d in sig.shape[1:]):
            result[key] = np.zeros((batch, *sig.shape[1:]), dtype=sig.dtype)
        elif sig.shape and len(sig.shape) >= 2 and sig.shape[1] is None and all(d is not None for d in sig.shape[2:]):
            result[key] = np.zeros((batch, 0, *sig.shape[2:]), dtype=sig.dtype)
        else:
            raise invalid(
                f"input {sequence!r} of signature {view.name!r} has T = 0 steps, and output {key!r} "
                f"({sig.shape_text()}) has no value for an empty sequence."
            )
    return result


def run(
    served: ServedVersion,
    signature_name: str,
    arrays: Mapping[str, np.ndarray],
    output_filter: Sequence[str] = (),
) -> tuple[str, dict[str, np.ndarray]]:
    """Checks `arrays` and runs the signature; returns (signature name, outputs by key).

    Raises:
        ServingError: FAILED_PRECONDITION for an unknown signature, INVALID_ARGUMENT for bad
            inputs or output filter, or the code of the TensorFlow error the run raised.
    """
    view = signature_view(served, signature_name)
    wanted = _output_filter(view, output_filter)
    check_inputs(served, view, arrays)
    sequence, _, _ = _roles(view) if served.manifest is not None else (None, None, None)
    if sequence is not None and arrays[sequence].shape[1] == 0:
        outputs = _empty_sequence(served, view, arrays)
    else:
        outputs = _call(served, view, arrays)
    return view.name, {k: outputs[k] for k in wanted}


def _output_filter(view: SignatureView, output_filter: Sequence[str]) -> list[str]:
    if not output_filter:
        return sorted(view.outputs)
    if len(set(output_filter)) != len(output_filter):
        raise invalid(f"output_filter names a tensor twice: {list(output_filter)}.")
    unknown = sorted(set(output_filter) - set(view.outputs))
    if unknown:
        raise invalid(
            f"output tensor alias(es) {unknown} not found in signature {view.name!r}. "
            f"Outputs expected to be in the set {sorted(view.outputs)}."
        )
    return list(output_filter)


def _call(served: ServedVersion, view: SignatureView, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    function = served.functions[view.name]
    try:
        result = function(**{k: tf.constant(v) for k, v in arrays.items()})
        return {k: v.numpy() for k, v in result.items()}
    except tf.errors.OpError as exc:
        message = " ".join(line.strip() for line in (exc.message or "").splitlines() if line.strip())
        raise ServingError(
            Code.from_grpc_value(exc.error_code),
            f"signature {view.name!r} of model {served.name!r} version {served.version} failed: "
            f"{message[:_MAX_TF_MESSAGE]}",
        ) from None
    except Exception as exc:  # noqa: BLE001 - never let a request take the server down
        raise ServingError(
            Code.INTERNAL, f"signature {view.name!r} failed: {type(exc).__name__}: {str(exc)[:_MAX_TF_MESSAGE]}"
        ) from None
