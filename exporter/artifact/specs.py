"""Typed descriptions of what seqexport builds: states, signatures, checks, the manifest.

Pure data: nothing here imports TensorFlow, so the CLI can read a manifest fast.
"""

from __future__ import annotations

import dataclasses
import enum
import re

# Manifest format history (bump on any change a reader must know about):
#   Version 1, 2026-11-23: first format: signatures, states, source, checks.
#   Version 2, 2026-12-01: adds verify_timings (seconds per check) and verify_peak_rss_mb.
#   Version 3, 2026-12-01: adds `outputs` (the output names of a model with several outputs;
#       empty for one output, keyed `outputs`, `y` in `step`, as before).
#   Version 4, 2026-12-01: adds `static_inputs` (inputs without a time axis, fed once per call).
#       Written only by exports that have static inputs; the others still write 3, key for key.
#   Version 5, 2026-12-01: adds `sequence_inputs` (more inputs with the main input's time axis, sliced
#       per step). Written only by exports that have them; the others still write 3 or 4, key for key.
#   Version 6, 2026-12-06: adds `fixed_steps` (the one sequence length `serving_default` takes),
#       `mask` and `steps` on a sequence input (a mask given as an input; an input's own length), and
#       `whole_sequence` (why an export has `serving_default` only). Written only by exports that have one.
#   Version 7, 2026-12-06: adds `context_inputs` (an encoder's inputs, each with a time axis of its own,
#       taken by `serving_default` and `initial_state` only). Written only by exports that have them.
#   Version 8, 2026-12-06: adds `max_length` (the positions of a causal attention's key/value cache, the
#       longest sequence a session streams). Written only by exports that have one.
#   Version 9, 2026-12-06: adds `generate` (what the `generate` signature feeds back, its bound on
#       `max_new_tokens`) and the options `generate` and `max_new_tokens`. Written only by exports that have it.
#   Version 10, 2026-12-06: adds `vocabularies` (each lookup layer's vocabulary, a file in the SavedModel's
#       `assets/`). Written only by exports that have one.
MANIFEST_FORMAT_VERSION = 10
VOCABULARY_ASSETS_FORMAT_VERSION = 10
GENERATE_FORMAT_VERSION = 9
KEY_VALUE_CACHE_FORMAT_VERSION = 8
CONTEXT_INPUTS_FORMAT_VERSION = 7
FIXED_STEPS_OR_MASK_INPUTS_FORMAT_VERSION = 6
SEQUENCE_INPUTS_FORMAT_VERSION = 5
STATIC_INPUTS_FORMAT_VERSION = 4
NO_STATIC_INPUTS_FORMAT_VERSION = 3


def manifest_format_version(*, static_inputs: bool, sequence_inputs: bool, fixed_steps_or_masks: bool = False,
                            context_inputs: bool = False, key_value_cache: bool = False,
                            generate: bool = False, vocabularies: bool = False) -> int:
    """The oldest format that holds what an export has (older readers keep reading the others)."""
    if vocabularies:
        return VOCABULARY_ASSETS_FORMAT_VERSION
    if generate:
        return GENERATE_FORMAT_VERSION
    if key_value_cache:
        return KEY_VALUE_CACHE_FORMAT_VERSION
    if context_inputs:
        return CONTEXT_INPUTS_FORMAT_VERSION
    if fixed_steps_or_masks:
        return FIXED_STEPS_OR_MASK_INPUTS_FORMAT_VERSION
    if sequence_inputs:
        return SEQUENCE_INPUTS_FORMAT_VERSION
    return STATIC_INPUTS_FORMAT_VERSION if static_inputs else NO_STATIC_INPUTS_FORMAT_VERSION
MIN_SUPPORTED_MANIFEST_VERSION = 1

# TF Serving, gRPC and REST all accept these in tensor and signature keys.
_KEY_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


class SignatureName(str, enum.Enum):
    """The signatures every export carries (design.md, "Signatures")."""

    PREDICT = "serving_default"
    STREAM = "stream"
    STEP = "step"
    INITIAL_STATE = "initial_state"
    INPUT_GRADIENTS = "input_gradients"
    GENERATE = "generate"
    GENERATE_FROM = "generate_from"  # `generate` from given states (a session that streamed already)


class RuntimeTarget(str, enum.Enum):
    """Runtimes an export converts to (`exporter.convert`); `export --targets` takes `EXPORT_TARGETS`.

    `triton` is a repository for Triton's ONNX Runtime backend (implicit state),
    `triton-python` one for its Python backend (`convert --to triton --backend python`).
    """

    TFLITE = "tflite"
    ONNX = "onnx"
    TRITON = "triton"
    TRITON_PYTHON = "triton-python"


# The ONNX Runtime-backend Triton repository is for the official container only, so it is
# written by `convert`; the Python-backend one can be checked on a real server here.
EXPORT_TARGETS = (RuntimeTarget.TFLITE.value, RuntimeTarget.ONNX.value, RuntimeTarget.TRITON_PYTHON.value)


class SourceKind(str, enum.Enum):
    KERAS_FILE = "keras_file"
    SAVED_MODEL = "saved_model"
    FACTORY = "factory"
    IN_MEMORY = "in_memory"  # a keras.Model or StepModel handed to the Python API


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Keyed:
    """A tensor named by a serving key, its shape a tuple (a list in JSON); subclasses add the fields."""

    def __post_init__(self):
        if not _KEY_PATTERN.match(self.name):
            raise ValueError(
                f"`name` must match {_KEY_PATTERN.pattern} to be a serving key. Got: {self.name!r}"
            )

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict):
        return cls(**(data | {"shape": tuple(data["shape"])}))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorDesc(_Keyed):
    """Shape (None = dynamic) and dtype name of one tensor, batch dimension included."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class StateSpec(_Keyed):
    """One state tensor of the step model, `[batch, *shape]`.

    Attributes:
        name: stable serving key, e.g. `lstm_1_h`; also the output key of the new state.
        layer: the layer (or factory cell) that owns it.
        index: its position in that layer's state list (Keras order: LSTM is [h, c]).
        shape: per-example shape, without the batch dimension.
        dtype: dtype name, e.g. `float32`.
    """

    name: str
    layer: str
    index: int
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        super().__post_init__()
        if self.index < 0:
            raise ValueError(f"`index` must be >= 0. Got: {self.index}")
        if any(d is None or d <= 0 for d in self.shape):
            raise ValueError(f"`shape` of state {self.name!r} must be static and positive. Got: {self.shape}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputSpec(_Keyed):
    """One output of a model with several outputs (a list or dict of Keras outputs).

    Attributes:
        name: its serving key in `serving_default`, `stream` and `step` (the Keras output name).
        shape: per-step shape, without batch and time.
        dtype: dtype name.
        last_step: `serving_default` returns its last step `[B, ...]` (an RNN without
            `return_sequences`, or a returned state) instead of `[B, T, ...]`; `stream`
            returns every step of it, `step` the one step.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    last_step: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputSpec(_Keyed):
    """An input beside the main sequence: a static one (no time axis, `[B, *shape]`, fed once per
    call and visible at every step) or a sequence one (`[B, T, *shape]`, sliced per step like the
    main input).

    Attributes:
        name: its serving key in every signature (the Keras input name).
        shape: shape without batch (and without time, for a sequence input).
        dtype: dtype name.
        vocab: for integer ids, the number of ids (probes draw from it); None otherwise. Written
            to JSON only when set.
        mask: a sequence input `[B, T]` (bool, or int 0/1) that the model passes as a layer's
            `mask=`: a step is skipped where it is false. Written to JSON only when true.
        steps: a sequence input of a whole-sequence export with a time length of its own (an
            encoder's source sentence beside the decoder's target): that fixed length, or -1 for
            any; None: the main input's (every streaming export). Written to JSON only when set.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    vocab: int | None = None
    mask: bool = False
    steps: int | None = None

    def to_json(self) -> dict:
        data = super().to_json()
        for key, unset in (("vocab", None), ("mask", False), ("steps", None)):
            if data[key] == unset:
                del data[key]
        return data


class Feedback(str, enum.Enum):
    """What `generate` feeds back as the next input: the id it chose, or the output's features."""

    IDS = "ids"
    FEATURES = "features"


class Scores(str, enum.Enum):
    """What the output of an id-generating model holds: probabilities (sampled as their logarithm)
    or logits (sampled as they are)."""

    PROBABILITIES = "probabilities"
    LOGITS = "logits"


DEFAULT_MAX_NEW_TOKENS = 256


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerateSpec:
    """What the `generate` signature does: its loop feeds the (first) output back as the next input.

    Attributes:
        feedback: `ids` (a distribution over the ids the first `Embedding` reads: the chosen id goes
            back) or `features` (a float output of the input's feature shape goes back, on request).
        scores: for `ids`, whether the output holds probabilities or logits; None for `features`.
        vocab: for `ids`, the number of ids (the output's last size); None for `features`.
        max_new_tokens: the most steps one call may generate (fixed at export).
        source: one line naming what makes it so (the layers), for reports.
    """

    feedback: Feedback
    scores: Scores | None = None
    vocab: int | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    source: str = ""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be at least 1. Got: {self.max_new_tokens}")
        ids = self.feedback is Feedback.IDS
        if ids != (self.scores is not None) or ids != (self.vocab is not None):
            raise ValueError("`scores` and `vocab` are set for `ids` feedback only. "
                             f"Got: feedback={self.feedback.value}, scores={self.scores}, vocab={self.vocab}")

    @property
    def output_key(self) -> str:
        """The key of what `generate` returns besides the states."""
        return "tokens" if self.feedback is Feedback.IDS else "predictions"

    def to_json(self) -> dict:
        return {"feedback": self.feedback.value, "scores": self.scores.value if self.scores else None,
                "vocab": self.vocab, "max_new_tokens": self.max_new_tokens, "source": self.source}

    @classmethod
    def from_json(cls, data: dict) -> "GenerateSpec":
        return cls(feedback=Feedback(data["feedback"]), scores=Scores(data["scores"]) if data.get("scores") else None,
                   vocab=data.get("vocab"), max_new_tokens=int(data["max_new_tokens"]), source=data.get("source", ""))


def check_sequence_chunk(name: str, array, chunk_shape: tuple[int, ...]) -> None:
    """Raises ValueError unless the other sequence input `name` (an array) starts with the chunk's batch
    size and steps (`chunk_shape[:2]`): every sequence input of a call covers the same steps."""
    if array.ndim < 2 or tuple(array.shape[:2]) != tuple(chunk_shape[:2]):
        raise ValueError(
            f"sequence input {name!r} has shape {list(array.shape)}; it needs the chunk's batch size and "
            f"steps {list(chunk_shape[:2])} first (the chunk of `inputs` is {list(chunk_shape)})."
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignatureSpec:
    """Inputs and outputs of one exported signature, by serving key."""

    name: str
    inputs: tuple[TensorDesc, ...]
    outputs: tuple[TensorDesc, ...]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    @classmethod
    def from_json(cls, data: dict) -> "SignatureSpec":
        return cls(
            name=data["name"],
            inputs=tuple(TensorDesc.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorDesc.from_json(t) for t in data["outputs"]),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tolerance:
    """Elementwise |got - want| <= atol + rtol * |want| (numpy.allclose's rule)."""

    atol: float
    rtol: float

    def __post_init__(self):
        if not (self.atol >= 0 and self.rtol >= 0):
            raise ValueError(f"`atol` and `rtol` must be >= 0. Got: atol={self.atol}, rtol={self.rtol}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckResult:
    """One comparison of one tensor: the row a user reads in the verify table.

    `max_abs`/`max_rel` are None when the check could not compute numbers (then
    `message` says why); `worst_index` is the element with the largest excess
    over the tolerance. `not_applicable`: the check does not apply to this export (a
    streaming check of a whole-sequence export: `message` says why); such a row did not
    pass (`passed` is False) and is no failure either.
    """

    check: str
    signature: str
    tensor: str
    passed: bool
    max_abs: float | None = None
    max_rel: float | None = None
    atol: float | None = None
    rtol: float | None = None
    worst_index: tuple[int, ...] | None = None
    message: str = ""
    not_applicable: bool = False

    @classmethod
    def inapplicable(cls, check: str, signature: str, why: str) -> "CheckResult":
        """The row of a check that does not apply to this export, saying why."""
        return cls(check=check, signature=signature, tensor="*", passed=False, not_applicable=True,
                   message=f"not applicable: {why}")

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["worst_index"] = list(self.worst_index) if self.worst_index is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict) -> "CheckResult":
        index = data.get("worst_index")
        return cls(**(data | {"worst_index": tuple(index) if index is not None else None}))


# Default tolerances by the dtype the model computes in: (outputs, gradients).
DEFAULT_TOLERANCES = {
    "float16": (Tolerance(atol=1e-2, rtol=1e-2), Tolerance(atol=5e-2, rtol=5e-2)),
    "bfloat16": (Tolerance(atol=2e-2, rtol=2e-2), Tolerance(atol=1e-1, rtol=1e-1)),
    "float32": (Tolerance(atol=1e-5, rtol=1e-4), Tolerance(atol=1e-4, rtol=1e-3)),
    "float64": (Tolerance(atol=1e-10, rtol=1e-8), Tolerance(atol=1e-9, rtol=1e-7)),
}
# Rows count as independent when every off-diagonal (batch, batch) Jacobian entry is at most
# this fraction of the largest diagonal one (exact zeros are expected; this absorbs nothing else).
BATCH_INDEPENDENCE_RTOL = 1e-6


class Check(str, enum.Enum):
    """Optional checks a user can force on (`--check`) or off (`--skip`)."""

    HVP = "hvp"


class CheckRows:
    """What every report holding `checks: tuple[CheckResult, ...]` says about them."""

    checks: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return any(c.passed for c in self.checks) and not self.failures

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed and not c.not_applicable)

    @property
    def inapplicable(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.not_applicable)

    def failure_summary(self, what: str = "checks") -> str:
        """`N of M <what> failed; first: <check> <signature> <tensor>: <why>`."""
        first = self.failures[0]
        detail = first.message or f"max abs {first.max_abs:.3g}"
        return (
            f"{len(self.failures)} of {len(self.checks)} {what} failed; first: {first.check} "
            f"{first.signature} {first.tensor}: {detail}"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """What the user asked for; recorded in the manifest (resolved: no None left).

    Attributes:
        with_input_gradients: also export the `input_gradients` signature.
        tolerance: tolerance of every output check; None: by dtype (`DEFAULT_TOLERANCES`).
        grad_tolerance: tolerance of the gradient checks; None: by dtype.
        check_hvp: verify a Hessian-vector product w.r.t. the inputs; None: on for every
            model with float inputs (it costs about two backward passes, whatever the size).
        probe_batch: batch size of the golden probe inputs.
        probe_steps: sequence length of the golden probe inputs.
        seed: seed of the probe inputs and the loss weights.
        unsafe: Keras safe mode was turned off to load the model.
        jit: compile the forward signatures (`serving_default`, `stream`, `step`) with XLA.
        fused: run `serving_default` and `stream` in whole-sequence kernels where the model
            has them (LSTM: TF's `BlockLSTM`; GRU, SimpleRNN: one loop with the input
            product hoisted; not with `jit`, not for masked models);
            the while_loop stays beside them as `<name>_unfused` signatures.
        targets: runtimes to convert to before publishing (`tflite`, `onnx`, `triton-python`); results go
            to `assets.extra/seqexport/runtimes/<target>/`.
        hvp_auto: `check_hvp` was chosen by default, not asked for: a model whose ops have no
            second derivative in TF then gets a "not supported" row instead of a failure.
        require_stream: refuse a model that cannot run step by step (exit 2) instead of exporting
            it whole-sequence.
        max_length: positions of a causal attention's key/value cache (streaming past them fails);
            None: the model's fixed input length, where it has one (else such a model is refused).
        generate: export `generate` for a model whose float output feeds its next input (an id
            model whose output is a distribution over its input ids gets it anyway); a model that
            cannot is refused (exit 2).
        max_new_tokens: the bound `generate` puts on its `max_new_tokens` input.
    """

    with_input_gradients: bool = False
    tolerance: Tolerance | None = None
    grad_tolerance: Tolerance | None = None
    check_hvp: bool | None = None
    probe_batch: int = 3
    probe_steps: int = 6
    seed: int = 0
    unsafe: bool = False
    jit: bool = False
    fused: bool = True
    targets: tuple[str, ...] = ()
    hvp_auto: bool = False
    require_stream: bool = False
    max_length: int | None = None
    generate: bool = False
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    def __post_init__(self):
        unknown = [t for t in self.targets if t not in EXPORT_TARGETS]
        if unknown or len(set(self.targets)) != len(self.targets):
            raise ValueError(
                f"`targets` must be distinct names from {list(EXPORT_TARGETS)} (a Triton repository for the "
                f"ONNX Runtime backend is written by `seqexport convert --to triton`). Got: {list(self.targets)}"
            )
        if self.probe_batch < 2:
            raise ValueError(f"`probe_batch` must be at least 2 (batch independence needs 2 rows). Got: {self.probe_batch}")
        if self.probe_steps < 2:
            raise ValueError(f"`probe_steps` must be at least 2 (chunking needs 2 chunks). Got: {self.probe_steps}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"`max_length` must be at least 2 (chunking needs 2 chunks). Got: {self.max_length}")
        if self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be at least 1. Got: {self.max_new_tokens}")

    def resolved(self, *, dtype: str, float_inputs: bool) -> "ExportOptions":
        """These options with every None replaced by the default for this model."""
        if dtype not in DEFAULT_TOLERANCES:
            raise ValueError(f"no default tolerance for dtype {dtype!r}; give --atol/--rtol and --grad-atol/--grad-rtol")
        outputs, gradients = DEFAULT_TOLERANCES[dtype]
        check_hvp = self.check_hvp
        if check_hvp is None:
            check_hvp = float_inputs
        return dataclasses.replace(
            self,
            tolerance=self.tolerance or outputs,
            grad_tolerance=self.grad_tolerance or gradients,
            check_hvp=check_hvp and float_inputs,
            hvp_auto=self.check_hvp is None,
        )

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        # Written only when asked for or changed: manifests of older formats stay key for key.
        for key, unset in (("generate", False), ("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), ("max_length", None)):
            if data[key] == unset:
                del data[key]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "ExportOptions":
        tolerance = lambda t: Tolerance(**t) if t else None  # noqa: E731
        return cls(
            **(
                data
                | {
                    "tolerance": tolerance(data["tolerance"]),
                    "grad_tolerance": tolerance(data["grad_tolerance"]),
                    "targets": tuple(data.get("targets", ())),
                }
            )
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
    """`assets.extra/seqexport/manifest.json`: the contract of one export.

    Clients may rely on: signature names, the input/output keys of each signature,
    the order and names of `states` (each is both an input and an output key of
    `stream` and `step`), and dtypes. `masked` says `serving_default` and `stream`
    take `lengths [B]`. `last_step_only` says `serving_default` returns the last
    step's output `[B, O]` instead of `[B, T, O]`. `outputs` is empty for a model with
    one output (keys `outputs`, and `y` in `step`); for several, it lists them in order:
    each is an output key of `serving_default`, `stream` and `step`. `static_inputs` (none for
    a model with one input) are input keys of every signature, `initial_state` included.
    `sequence_inputs` (none for a model with one sequence input) are input keys `[B, T, ...]` of
    `serving_default`, `stream` and `input_gradients` (the same T as `inputs`) and `[B, ...]` of `step`
    (one with `mask` set is a mask given as an input: a step is skipped where it is false).
    `fixed_steps` (None: any) is the one sequence length `serving_default` and `input_gradients` take,
    the model's input being of a fixed length; `stream` takes chunks of any length. `whole_sequence`, when
    set, says why the model cannot run step by step: the export then has `serving_default` (and
    `input_gradients`) only, no states, and an output without a time axis has `last_step` set (it is
    returned whole). `context_inputs` (an encoder's inputs, `[B, S, ...]` with a time length of their own:
    `steps`, -1 for any) are input keys of `serving_default`, `input_gradients` and `initial_state` only:
    the states `initial_state` returns carry what the encoder computed. `mask_pad_value` (masked exports) is
    the value that marks a padded step in `inputs`: a step past a row's `lengths` is that padding.
    `max_length` (None: no cache) is the number of positions of the key/value caches of causal
    attention (states `<layer>_key`, `<layer>_value`, and `position`): a session streams at most that many
    steps. `generate` (None: no `generate` signature) says what that signature feeds back and its bound on `max_new_tokens`:
    it takes `prompt`, `max_new_tokens` (and, for ids, `temperature`, `top_k`, `seed`) with the static and
    context inputs, and returns `tokens` (ids) or `predictions` (features) and every final state.
    `vocabularies` lists each lookup layer's vocabulary file in the SavedModel's `assets/`. DO NOT
    RELY on `checks` beyond
    reading them: rows may be added. `batch_independent` is None until that check
    ran; only `True` allows server-side batching (`batch_offdiag_max` is the largest
    off-diagonal `(batch, batch)` Jacobian block magnitude found). `verify_timings`
    (seconds per check, in run order) and `verify_peak_rss_mb` describe the last
    fresh-process verification.
    """

    format_version: int
    name: str
    source: dict
    signatures: tuple[SignatureSpec, ...]
    states: tuple[StateSpec, ...]
    masked: bool
    last_step_only: bool
    trainable_variables: tuple[str, ...]
    options: ExportOptions
    versions: dict
    checks: tuple[CheckResult, ...] = ()
    batch_independent: bool | None = None
    batch_offdiag_max: float | None = None
    verify_timings: dict = dataclasses.field(default_factory=dict)
    verify_peak_rss_mb: float | None = None
    outputs: tuple[OutputSpec, ...] = ()
    static_inputs: tuple[InputSpec, ...] = ()
    sequence_inputs: tuple[InputSpec, ...] = ()
    fixed_steps: int | None = None
    whole_sequence: str = ""
    context_inputs: tuple[InputSpec, ...] = ()
    mask_pad_value: float = 0.0
    max_length: int | None = None
    generate: GenerateSpec | None = None
    vocabularies: tuple[VocabularyAsset, ...] = ()

    @property
    def streams(self) -> bool:
        """It has the streaming signatures (`stream`, `step`, `initial_state`)."""
        return not self.whole_sequence

    def cache_bytes(self) -> int:
        """Bytes per sequence of the key/value caches (0: none): what a session carries for them."""
        if self.max_length is None:
            return 0
        return sum(state_bytes(s) for s in self.states if s.shape[:1] == (self.max_length,)
                   and s.name.endswith(("_key", "_value")))

    def output_keys(self) -> tuple[tuple[str, str, bool], ...]:
        """(key in `serving_default`/`stream`, key in `step`, last step only) of each output."""
        if not self.outputs:
            return (("outputs", "y", self.last_step_only),)
        return tuple((o.name, o.name, o.last_step) for o in self.outputs)

    def signature(self, name: str) -> SignatureSpec:
        for sig in self.signatures:
            if sig.name == name:
                return sig
        raise KeyError(
            f"No signature {name!r}. Available: {[s.name for s in self.signatures]}"
        )

    def to_json(self) -> dict:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "source": self.source,
            "signatures": [s.to_json() for s in self.signatures],
            "states": [s.to_json() for s in self.states],
            "masked": self.masked,
            "last_step_only": self.last_step_only,
            "trainable_variables": list(self.trainable_variables),
            "options": self.options.to_json(),
            "versions": self.versions,
            "checks": [c.to_json() for c in self.checks],
            "batch_independent": self.batch_independent,
            "batch_offdiag_max": self.batch_offdiag_max,
            "verify_timings": {k: round(v, 3) for k, v in self.verify_timings.items()},
            "verify_peak_rss_mb": self.verify_peak_rss_mb,
            "outputs": [o.to_json() for o in self.outputs],
        } | ({"static_inputs": [i.to_json() for i in self.static_inputs]} if self.static_inputs else {}) | (
            {"sequence_inputs": [i.to_json() for i in self.sequence_inputs]} if self.sequence_inputs else {}) | (
            {"fixed_steps": self.fixed_steps} if self.fixed_steps is not None else {}) | (
            {"whole_sequence": self.whole_sequence} if self.whole_sequence else {}) | (
            {"context_inputs": [i.to_json() for i in self.context_inputs]} if self.context_inputs else {}) | (
            {"mask_pad_value": self.mask_pad_value} if self.masked else {}) | (
            {"max_length": self.max_length} if self.max_length is not None else {}) | (
            {"generate": self.generate.to_json()} if self.generate is not None else {}) | (
            {"vocabularies": [v.to_json() for v in self.vocabularies]} if self.vocabularies else {})

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        version = data.get("format_version")
        if not isinstance(version, int) or not (
            MIN_SUPPORTED_MANIFEST_VERSION <= version <= MANIFEST_FORMAT_VERSION
        ):
            raise ValueError(
                f"manifest format_version {version!r} is not supported by this seqexport "
                f"(reads {MIN_SUPPORTED_MANIFEST_VERSION}..{MANIFEST_FORMAT_VERSION}); "
                "re-export the model with this version of seqexport."
            )
        return cls(
            format_version=version,
            name=data["name"],
            source=data["source"],
            signatures=tuple(SignatureSpec.from_json(s) for s in data["signatures"]),
            states=tuple(StateSpec.from_json(s) for s in data["states"]),
            masked=data["masked"],
            last_step_only=data["last_step_only"],
            trainable_variables=tuple(data["trainable_variables"]),
            options=ExportOptions.from_json(data["options"]),
            versions=data["versions"],
            checks=tuple(CheckResult.from_json(c) for c in data.get("checks", [])),
            batch_independent=data.get("batch_independent"),
            batch_offdiag_max=data.get("batch_offdiag_max"),
            verify_timings=dict(data.get("verify_timings", {})),
            verify_peak_rss_mb=data.get("verify_peak_rss_mb"),
            outputs=tuple(OutputSpec.from_json(o) for o in data.get("outputs", [])),
            static_inputs=tuple(InputSpec.from_json(i) for i in data.get("static_inputs", [])),
            sequence_inputs=tuple(InputSpec.from_json(i) for i in data.get("sequence_inputs", [])),
            fixed_steps=data.get("fixed_steps"),
            whole_sequence=data.get("whole_sequence", ""),
            context_inputs=tuple(InputSpec.from_json(i) for i in data.get("context_inputs", [])),
            mask_pad_value=float(data.get("mask_pad_value", 0.0)),
            max_length=data.get("max_length"),
            generate=GenerateSpec.from_json(data["generate"]) if data.get("generate") else None,
            vocabularies=tuple(VocabularyAsset.from_json(v) for v in data.get("vocabularies", [])),
        )


# The state that counts each row's steps where a layer reads the position (exporter/causal.py): a whole number.
POSITION_STATE = "position"

_ITEM_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}


def state_bytes(state: StateSpec) -> int:
    """Bytes of one row of `state`."""
    count = 1
    for d in state.shape:
        count *= d
    return count * _ITEM_BYTES.get(state.dtype, 4)


@dataclasses.dataclass(frozen=True)
class VocabularyAsset:
    """A lookup layer's vocabulary saved as `assets/<file>`, one token a line (exporter/vocabulary.py):
    `words` lines whose text hashes (each ended by a line break) to `sha256`."""

    layer: str
    file: str
    words: int
    sha256: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "VocabularyAsset":
        return cls(layer=data["layer"], file=data["file"], words=int(data["words"]), sha256=data["sha256"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerifyReport(CheckRows):
    """All rows of one verification; `passed` only when every row passed."""

    export_dir: str
    checks: tuple[CheckResult, ...]
    seconds: float = 0.0
    timings: dict = dataclasses.field(default_factory=dict)
    properties: dict = dataclasses.field(default_factory=dict)
    peak_rss_mb: float | None = None

    def summary(self) -> str:
        if not self.passed:
            return self.failure_summary()
        skipped = len(self.inapplicable)
        return (f"all {len(self.checks) - skipped} checks passed"
                + (f", {skipped} not applicable" if skipped else ""))

    def to_json(self) -> dict:
        return {
            "export_dir": self.export_dir,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "properties": self.properties,
            "peak_rss_mb": None if self.peak_rss_mb is None else round(self.peak_rss_mb, 1),
            "checks": [c.to_json() for c in self.checks],
        }
