"""The one abstraction: a step function `(x_t, states) -> (y_t, new_states)` and its specs.

A factory (`package.module:function`) returns a `StepModel`; the Keras loader builds
one from a model's cells. Everything else (signatures, goldens, checks) is derived
from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from exporter.artifact.specs import GenerateSpec, InputSpec, OutputSpec, StateSpec

StepFn = Callable[[Any, tuple], tuple[Any, tuple]]
MaskedStepFn = Callable[[Any, tuple, Any], tuple[Any, tuple]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepModel:
    """A sequence model written as one step with explicit state.

    Attributes:
        step_fn: `(x_t [B, *input_shape], states) -> (y_t [B, *output_shape], new_states)`;
            `states` is a tuple in the order of `states` specs, each `[B, *spec.shape]`.
            Must be traceable by `tf.function`; `tf.custom_gradient` inside is kept.
        input_shape: per-step input shape without batch (`()` for token ids).
        input_dtype: dtype name of `x_t`, e.g. `float32` or `int32`.
        output_shape: per-step output shape without batch.
        output_dtype: dtype name of `y_t`.
        states: one `StateSpec` per state tensor, in `step_fn` order.
        variables: every `tf.Variable` the step reads (kept in the SavedModel).
        trainable_variables: the ones gradients are checked against, in a stable order.
        masked_step_fn: `(x_t, states, mask_t [B] bool) -> (y_t, new_states)`; when set,
            `serving_default` and `stream` take `lengths [B]`.
        bind_step: optional `() -> (x_t, states, mask_t or None) -> (y_t, new_states)`,
            called once per traced function OUTSIDE the loop: read the variables there
            and close over the values. The loop then captures tensors, not variable
            handles, which a reloaded SavedModel needs for second-order gradients
            (`tape.jacobian`, Hessian-vector products) and which saves a read per step.
        head: optional stateless per-step map run once after the loop on `[B, T, *core]`
            (and on `[B, *core]` by `step`); when set, `bind_step`'s step returns the core
            output of shape `core_output_shape` (dtype `core_output_dtype`, default
            `output_dtype`) and `head` turns it into `output_shape`.
        fused_unroll: optional `(inputs [B, T, ...], states) -> (outputs [B, T, ...],
            new_states)`: the same maths as the unroll in whole-sequence runs (an LSTM
            as TF's `BlockLSTM`, a GRU or SimpleRNN as one loop with its input product
            hoisted), used by `serving_default` and `stream` unless `--jit` or `--no-fused`;
            never for masked models. Its outputs are the model's, `head` included (it may run
            the head inside, before its outputs leave the layout it computes in). The
            while_loop stays as the `<name>_unfused` twins.
        last_step_only: `serving_default` returns only the last step's output.
        reference_fn: `(inputs [B,T,...], lengths or None) -> outputs`: the source model's
            own full-sequence call, the ground truth the export is checked against.
        reference_variables: variables of `reference_fn` in `trainable_variables` order
            (None when they are the same objects).
        mask_pad_value: value that marks a padded step in `reference_fn` inputs.
        reference_batch: batch size `reference_fn` needs (stateful Keras models are built
            for one), or None for any.
        reference_steps: sequence length `reference_fn` needs (a fixed-length Input, or a
            `RepeatVector(n)` that broadcasts a static input over n steps), or None for any.
            The golden probes then have that many steps.
        fixed_steps: the one sequence length the model's input takes (`keras.Input((T, F))`), or None:
            `serving_default` and `input_gradients` then fail on any other T, naming it, as the
            source model does; `stream` takes chunks of any length (a `RepeatVector(n)` alone fixes
            `reference_steps`, not this: the export takes any T).
        trainable_names: readable, unique names of `trainable_variables` for reports
            (default: the variables' own names, numbered where they clash).
        input_vocab: for integer inputs (token ids), the number of ids; probes draw from it.
        description: one line naming the source, for reports.
        outputs: for a model with several outputs, one `OutputSpec` each (at least two):
            the step then returns a tuple of per-step outputs in this order, the signatures
            key them by name, `reference_fn` returns them as a dict by name, and
            `output_shape`/`output_dtype` describe the first. Empty: one output. Not with
            `head`, `fused_unroll` or `last_step_only` (each output says its own).
        static_inputs: inputs without a time axis (`[B, *shape]` each), fed once per call to every
            signature and visible at every step: `step_fn(x_t, states, statics)` and the bound
            step `(x_t, states, mask_t, statics)` then take them as a tuple in this order, and
            `reference_fn(inputs, lengths, statics)` too. Not with `head` or `fused_unroll`.
        sequence_inputs: more inputs with the main input's time axis (`[B, T, *shape]` each, the same
            T; `shape` per step): every sequence signature takes them whole and `step` one step of each.
            The step sees their slices at step t AFTER the static values, in one tuple:
            `step_fn(x_t, states, (*statics, *slices_t))` and the bound step `(x_t, states, mask_t,
            (*statics, *slices_t))`; `reference_fn(inputs, lengths, (*statics, *sequences))` gets them
            whole. Not with `head` or `fused_unroll`; a mask comes from the main input.
        context_inputs: inputs with a time axis of their own (`[B, S, *shape]`, `steps` the fixed S or
            -1) that reach the step only through `initial_states_fn`: an encoder's source sequence
            (exporter/context.py). `serving_default`, `input_gradients` and `initial_state` take them;
            `stream` and `step` do not (the states carry what the encoder computed).
            `reference_fn(inputs, lengths, (*statics, *contexts, *sequences))` gets them whole.
        initial_states_fn: optional `(values) -> states`: the states before the first step when
            they come from the static or context inputs (an RNN's `initial_state=`; `values`: the
            statics, then the contexts); `serving_default` starts from them and `initial_state`
            returns them. None: zeros.
        sequence_fn: for a model that cannot run step by step: `(inputs [B, T, ...], lengths or None,
            extras) -> outputs` over the whole sequence (`extras`: static, then other sequence inputs,
            whole; several outputs as a tuple in `outputs` order). The export is then whole-sequence
            only (`serving_default`, and `input_gradients` if asked): `step_fn` is None, no states.
            An output with a time axis has `output_shape` (or `OutputSpec.shape`) per step; one without
            (`last_step_only`, `OutputSpec.last_step`) its whole shape after the batch.
        max_length: the positions of a causal attention's key/value caches (exporter/causal.py), None
            without one: a session streams at most that many steps.
        findings: what the probes found that the user should read (a layer stepped on a key/value
            cache, a layer that reads the position), one line each; the export prints them.
        whole_sequence_reason: why the model cannot stream (the layer, and what its probe found):
            set with `sequence_fn`, recorded in the manifest and said by every streaming check.
        sequence_masked: a whole-sequence model marks padding in its inputs (`Masking`,
            `Embedding(mask_zero=True)`): its export takes `lengths` too, the steps past a row's
            length then padded with `mask_pad_value` before the call.
        text_vocabulary: a whole-sequence model whose main input is strings (`input_dtype`
            "string"): the words its probes are made of. Raw text, `[B, *input_shape]` with no
            time axis (a `TextVectorization` makes the sequence), unless `text_tokens`.
        text_tokens: the strings are tokens, one per step, `[B, T]` (a `StringLookup` reads them).
        trackables: objects the traced functions read besides the variables (the lookup tables
            of a `TextVectorization`): the SavedModel must track them.
        generation: the (first) output is a distribution over the input ids (`Feedback.IDS`): the
            export gets a `generate` signature feeding the chosen id back (exporter/generate.py). None:
            only on request, for a float output of the input's shape (`generation_refusal` then says
            why an id model cannot have it).
        generation_refusal: why the output cannot feed the next input (the layers and sizes), or "".

    Example:
        >>> import tensorflow as tf
        >>> w = tf.Variable(tf.random.normal([3, 4]))
        >>> def step(x, states):
        ...     h = tf.tanh(x @ w + states[0])
        ...     return h, (h,)
        >>> model = StepModel(step_fn=step, input_shape=(3,), output_shape=(4,),
        ...     states=(StateSpec(name="cell_h", layer="cell", index=0, shape=(4,)),),
        ...     variables=(w,), trainable_variables=(w,))
    """

    step_fn: StepFn
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    states: tuple[StateSpec, ...]
    variables: tuple = ()
    trainable_variables: tuple = ()
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    masked_step_fn: MaskedStepFn | None = None
    bind_step: Callable[[], MaskedStepFn] | None = None
    head: Callable | None = None
    core_output_shape: tuple[int, ...] | None = None
    core_output_dtype: str | None = None
    fused_unroll: Callable | None = None
    last_step_only: bool = False
    reference_fn: Callable | None = None
    reference_variables: tuple | None = None
    mask_pad_value: float = 0.0
    reference_batch: int | None = None
    reference_steps: int | None = None
    fixed_steps: int | None = None
    trainable_names: tuple[str, ...] | None = None
    input_vocab: int | None = None
    description: str = ""
    outputs: tuple[OutputSpec, ...] = ()
    static_inputs: tuple[InputSpec, ...] = ()
    sequence_inputs: tuple[InputSpec, ...] = ()
    context_inputs: tuple[InputSpec, ...] = ()
    initial_states_fn: Callable | None = None
    sequence_fn: Callable | None = None
    whole_sequence_reason: str = ""
    max_length: int | None = None
    findings: tuple[str, ...] = ()
    sequence_masked: bool = False
    text_vocabulary: tuple[str, ...] = ()
    text_tokens: bool = False
    trackables: tuple = ()
    generation: GenerateSpec | None = None
    generation_refusal: str = ""

    def __post_init__(self):
        if self.sequence_fn is not None:
            self._check_whole_sequence()
        elif not callable(self.step_fn):
            raise TypeError(f"`step_fn` must be callable. Got: {type(self.step_fn).__name__}")
        if not isinstance(self.states, Sequence) or not all(
            isinstance(s, StateSpec) for s in self.states
        ):
            raise TypeError("`states` must be a tuple of exporter.StateSpec.")
        names = [s.name for s in self.states]
        if len(set(names)) != len(names):
            raise ValueError(f"`states` names must be unique. Got: {names}")
        reserved = {"inputs", "outputs", "lengths", "x", "y", "batch_size"} & set(names)
        if reserved:
            raise ValueError(f"state names {sorted(reserved)} clash with signature keys; rename them.")
        if self.head is not None and (self.bind_step is None or self.core_output_shape is None):
            raise ValueError("`head` needs `bind_step` (whose step returns the core output) and `core_output_shape`.")
        if self.fused_unroll is not None and self.masked:
            raise ValueError("`fused_unroll` is for models without a mask; drop it or `masked_step_fn`.")
        if self.outputs:
            self._check_outputs(names)
        if self.extra_inputs:
            self._check_extra_inputs(names)
        if not self.initial_inputs and self.initial_states_fn is not None:
            raise ValueError("`initial_states_fn` computes states from `static_inputs` or `context_inputs`; this "
                             "model has none.")
        if self.reference_variables is not None and len(self.reference_variables) != len(
            self.trainable_variables
        ):
            raise ValueError("`reference_variables` must match `trainable_variables` one to one.")

    def _check_whole_sequence(self) -> None:
        if not callable(self.sequence_fn) or not self.whole_sequence_reason:
            raise TypeError("`sequence_fn` must be callable and `whole_sequence_reason` say why the model cannot stream.")
        if self.step_fn is not None or self.states or self.fused_unroll is not None or self.head is not None:
            raise ValueError("a whole-sequence model (`sequence_fn`) has no `step_fn`, states, `fused_unroll` or `head`.")

    @property
    def text_input(self) -> bool:
        """The main input is raw text `[B, *input_shape]` (no time axis)."""
        return self.input_dtype == "string" and not self.text_tokens

    @property
    def streams(self) -> bool:
        """It runs step by step (`step_fn`); else whole-sequence only (`sequence_fn`)."""
        return self.sequence_fn is None

    def _check_outputs(self, state_names: list[str]) -> None:
        if len(self.outputs) < 2 or not all(isinstance(o, OutputSpec) for o in self.outputs):
            raise TypeError("`outputs` must be empty (one output) or two or more exporter.OutputSpec.")
        names = [o.name for o in self.outputs]
        clashes = sorted({n for n in names if names.count(n) > 1}
                         | ({"inputs", "lengths", "x", "batch_size", *state_names} & set(names)))
        if clashes:
            raise ValueError(f"output names {clashes} are repeated or clash with input or state keys "
                             f"(states: {state_names}); rename those outputs.")
        if self.head is not None or self.fused_unroll is not None or self.last_step_only:
            raise ValueError("several `outputs` go without `head`, `fused_unroll` and `last_step_only`.")

    def _check_extra_inputs(self, state_names: list[str]) -> None:
        """Static and sequence inputs alike: InputSpecs, their names unique and free."""
        if not all(isinstance(i, InputSpec) for i in self.extra_inputs):
            raise TypeError("`static_inputs`, `context_inputs` and `sequence_inputs` must be tuples of "
                            "exporter.InputSpec.")
        names = [i.name for i in self.extra_inputs]
        taken = {"inputs", "outputs", "lengths", "x", "y", "batch_size", *state_names, *(o.name for o in self.outputs)}
        clashes = sorted({n for n in names if names.count(n) > 1} | (taken & set(names)))
        if clashes:
            raise ValueError(f"input names {clashes} are repeated or clash with other keys; rename them.")
        if self.head is not None or self.fused_unroll is not None:
            raise ValueError("`static_inputs` and `sequence_inputs` go without `head` and `fused_unroll`.")

    @property
    def extra_inputs(self) -> tuple[InputSpec, ...]:
        """Every input besides the main sequence, in the order `reference_fn` takes them: statics,
        contexts, then sequences (the step sees the statics and the sequences' slices)."""
        return (*self.static_inputs, *self.context_inputs, *self.sequence_inputs)

    @property
    def initial_inputs(self) -> tuple[InputSpec, ...]:
        """What `initial_states_fn` and the `initial_state` signature take: statics, then contexts."""
        return (*self.static_inputs, *self.context_inputs)

    def variable_names(self) -> tuple[str, ...]:
        if self.trainable_names is not None:
            return tuple(self.trainable_names)
        names = [getattr(v, "name", f"var{i}").split(":")[0] for i, v in enumerate(self.trainable_variables)]
        return tuple(n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names))

    def bound_step(self) -> MaskedStepFn:
        """The step to call inside one traced function: `(x_t, states, mask_t or None)`."""
        if self.bind_step is not None:
            return self.bind_step()

        if self.extra_inputs:
            return lambda x, states, mask=None, statics=(): self.step_fn(x, states, statics)

        def step(x, states, mask=None):
            if mask is None:
                return self.step_fn(x, states)
            return self.masked_step_fn(x, states, mask)

        return step

    def loop_output_shape(self) -> tuple[int, ...]:
        """Per-step shape of what the loop writes: the core output when there is a head."""
        return self.core_output_shape if self.head is not None else self.output_shape

    def loop_output_dtype(self) -> str:
        """Dtype of what the loop writes (a float16 cell under `mixed_float16` before a float32 head)."""
        return (self.core_output_dtype or self.output_dtype) if self.head is not None else self.output_dtype

    def apply_head(self, outputs):
        return self.head(outputs) if self.head is not None else outputs

    @property
    def compute_dtype(self) -> str:
        """The least precise float dtype of the outputs and states: what the tolerances follow
        (a `mixed_float16` model computes in float16 even where its head returns float32)."""
        order = ("bfloat16", "float16", "float32", "float64")
        floats = [d for d in (self.output_dtype, self.loop_output_dtype(), *(o.dtype for o in self.outputs),
                              *(s.dtype for s in self.states))
                  if d in order]
        return min(floats, key=order.index) if floats else self.output_dtype

    @property
    def masked(self) -> bool:
        """The export takes `lengths`: a layer marks padding in the inputs."""
        return self.masked_step_fn is not None or self.sequence_masked

    @property
    def differentiable_inputs(self) -> bool:
        return self.input_dtype.startswith("float")
