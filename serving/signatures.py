"""What a served signature takes and returns, read from a SignatureDef or a manifest.

Server and clients both need it: the server checks requests against it, the
clients find their tensor keys in it. `SequenceKeys` names the roles of an
export's keys (sequence input, output, states, lengths, batch size) from the
signatures alone, by the manifest's contract: every state is both an input and
an output key of `stream`, and `initial_state` takes one scalar. So a client
never spells a tensor key itself, and works against any export, including
ones whose states are named differently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from exporter.artifact.specs import SignatureName, SignatureSpec


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSig:
    """One input or output: its key, dtype name (numpy's, e.g. `float32`) and shape.

    Attributes:
        key: the serving key (the SignatureDef map key, not the graph tensor name).
        dtype: numpy dtype name.
        shape: one entry per dimension, None where any size is accepted; None
            for the whole shape when the rank is unknown.
    """

    key: str
    dtype: str
    shape: tuple[int | None, ...] | None

    def shape_text(self) -> str:
        if self.shape is None:
            return "any shape"
        return "[" + ", ".join("-1" if d is None else str(d) for d in self.shape) + "]"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignatureView:
    """Inputs and outputs of one signature, by serving key."""

    name: str
    inputs: Mapping[str, TensorSig]
    outputs: Mapping[str, TensorSig]

    @classmethod
    def from_signature_def(cls, name: str, signature_def) -> "SignatureView":
        """From a `tensorflow.SignatureDef` proto (what TF Serving's metadata returns)."""
        return cls(
            name=name,
            inputs={k: _from_tensor_info(k, v) for k, v in sorted(signature_def.inputs.items())},
            outputs={k: _from_tensor_info(k, v) for k, v in sorted(signature_def.outputs.items())},
        )

    @classmethod
    def from_spec(cls, spec: SignatureSpec) -> "SignatureView":
        """From the manifest's `SignatureSpec`."""
        return cls(
            name=spec.name,
            inputs={t.name: TensorSig(key=t.name, dtype=t.dtype, shape=tuple(t.shape)) for t in spec.inputs},
            outputs={t.name: TensorSig(key=t.name, dtype=t.dtype, shape=tuple(t.shape)) for t in spec.outputs},
        )


def _from_tensor_info(key: str, info) -> TensorSig:
    import tensorflow as tf  # dtype enum -> name; the protos already imported TF

    try:
        dtype = tf.dtypes.as_dtype(info.dtype)
        dtype_name = "string" if dtype == tf.string else dtype.name
    except TypeError:  # DT_INVALID, e.g. the outputs of `__saved_model_init_op`
        dtype_name = "invalid"
    shape_proto = info.tensor_shape
    shape = None if shape_proto.unknown_rank else tuple(
        None if d.size < 0 else int(d.size) for d in shape_proto.dim
    )
    return TensorSig(key=key, dtype=dtype_name, shape=shape)


def views_from_signature_defs(signature_defs: Mapping) -> dict[str, SignatureView]:
    """Every signature of a SignatureDef map (proto map or dict), by name."""
    return {name: SignatureView.from_signature_def(name, sd) for name, sd in signature_defs.items()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SequenceKeys:
    """The role of each tensor key of a seqexport export, found from its signatures.

    Attributes:
        sequence: the `[B, T, ...]` input of `stream` and `serving_default`.
        output: the `[B, T, ...]` output of `stream` of a one-output export; None when it has several.
        outputs: every output key of `stream` that is not a state, sorted (one: `(output,)`).
        states: every state key (input and output of `stream`), sorted.
        lengths: the `[B]` integer input of masked exports, else None.
        batch_size: the scalar input of `initial_state`.
        statics: the static inputs (no time axis), sorted: inputs of both `initial_state` and
            `stream`, fed with every call; empty for most exports.
        sequences: the other sequence inputs `[B, T, ...]` beside `sequence` (`inputs`), sorted,
            fed with every chunk (the chunk's `T`); empty for most exports.
        contexts: the context inputs (an encoder's `[B, S, ...]`), sorted: inputs of `initial_state`
            only, given once per sequence; empty for most exports.
    """

    sequence: str
    output: str | None
    states: tuple[str, ...]
    lengths: str | None
    batch_size: str
    outputs: tuple[str, ...] = ()
    statics: tuple[str, ...] = ()
    sequences: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.outputs and self.output is not None:  # one output: `outputs` is `(output,)`
            object.__setattr__(self, "outputs", (self.output,))
        if self.output is None and len(self.outputs) < 2:
            raise ValueError(f"`output` is None only for several outputs. Got outputs {self.outputs}")

    @property
    def several_outputs(self) -> bool:
        return self.output is None

    @classmethod
    def from_views(cls, views: Mapping[str, SignatureView]) -> "SequenceKeys":
        """Raises ValueError naming what is missing when these are not a seqexport export's signatures."""
        for needed in (SignatureName.STREAM.value, SignatureName.INITIAL_STATE.value):
            if needed not in views:
                raise ValueError(
                    f"signature {needed!r} is missing (found {sorted(views)}); streaming needs an export made by "
                    "seqexport from a model that runs step by step. A whole-sequence export (`serving_default` "
                    "only: the model mixes time steps) takes whole sequences: call `serving_default` with them."
                )
        stream = views[SignatureName.STREAM.value]
        states = tuple(sorted(set(stream.inputs) & set(stream.outputs)))
        if not states:
            raise ValueError("signature 'stream' has no key that is both an input and an output (no state).")
        initial = views[SignatureName.INITIAL_STATE.value]
        statics = tuple(sorted(k for k in stream.inputs if k in initial.inputs and k not in states))
        rest_in = [t for k, t in stream.inputs.items() if k not in states and k not in statics]
        lengths = [t.key for t in rest_in if _is_lengths(t)]
        sequence = [t.key for t in rest_in if t.key not in lengths]
        outputs = tuple(sorted(k for k in stream.outputs if k not in states))
        rest = [k for k in initial.inputs if k not in statics]
        batch_size = [k for k in rest if initial.inputs[k].shape == ()]
        contexts = tuple(sorted(k for k in rest if k not in batch_size))  # an encoder's inputs
        others: tuple[str, ...] = ()
        if len(sequence) > 1 and "inputs" in sequence:  # several sequence inputs: `inputs` is the main one
            others, sequence = tuple(sorted(k for k in sequence if k != "inputs")), ["inputs"]
        if len(sequence) != 1 or len(lengths) > 1 or not outputs:
            raise ValueError(
                f"signature 'stream' does not have the seqexport layout: inputs {sorted(stream.inputs)}, "
                f"outputs {sorted(stream.outputs)}, states {list(states)}."
            )
        if len(batch_size) != 1:
            raise ValueError(
                f"signature 'initial_state' takes {sorted(initial.inputs)}; expected one scalar "
                f"(plus the static inputs {list(statics)} and any context inputs)."
            )
        return cls(
            sequence=sequence[0],
            output=outputs[0] if len(outputs) == 1 else None,
            outputs=outputs,
            states=states,
            lengths=lengths[0] if lengths else None,
            batch_size=batch_size[0],
            statics=statics,
            sequences=others,
            contexts=contexts,
        )


def _is_lengths(sig: TensorSig) -> bool:
    return sig.shape is not None and len(sig.shape) == 1 and sig.dtype.startswith(("int", "uint"))
