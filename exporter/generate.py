"""The `generate` signature: one request, N new steps, the loop inside the graph.

Built on the step model alone (whatever states it has): the prompt goes through the
whole-sequence path from the initial states (`trace.unroll`, fused kernels where the export
has them), then ONE `tf.while_loop` calls the step N times, feeding back the id it chose
(or the output's features). Sampling uses stateless random ops seeded from `seed` and the
step index, so a seeded call gives the same ids after any reload and equals the same sampler
driven through `step` from Python (`choose` is that sampler). `generate_from` is the same loop
from the states it is given (as `stream` takes them), so a session that streamed already goes on.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from exporter.artifact.errors import BadInput
from exporter.artifact.specs import Feedback, GenerateSpec, Scores, SignatureName, SignatureSpec, TensorDesc
from exporter.step_model import StepModel
from exporter.trace import TracedExport, initial_states, unroll


def plan(model: StepModel, *, requested: bool, max_new_tokens: int) -> GenerateSpec | None:
    """The `generate` this model gets: ids whenever its output is a distribution over its input ids,
    features when asked for (`requested`) and the output has the input's shape; else None.

    Raises:
        BadInput: `requested` and the model's output cannot feed its next input (says why).
    """
    refusal = _refusal(model)
    if refusal:
        if requested:
            raise BadInput(f"--generate: {model.description or 'the model'} cannot generate: {refusal}.")
        return None
    if model.generation is not None:
        return dataclasses.replace(model.generation, max_new_tokens=max_new_tokens)
    if not requested:  # a float output fed back is the user's call (a forecaster may not mean it)
        return None
    shape = _first_output_shape(model)
    return GenerateSpec(feedback=Feedback.FEATURES, max_new_tokens=max_new_tokens,
                        source=f"the output's {list(shape)} features per step feed the next input")


def _first_output_shape(model: StepModel) -> tuple[int, ...]:
    return tuple(model.outputs[0].shape) if model.outputs else tuple(model.output_shape)


def _first_output_dtype(model: StepModel) -> str:
    return model.outputs[0].dtype if model.outputs else model.output_dtype


def _refusal(model: StepModel) -> str:
    """Why the model's (first) output cannot feed its next input, or ""."""
    if not model.streams:
        return f"it cannot run step by step ({model.whole_sequence_reason})"
    if model.fixed_steps is not None or model.reference_steps is not None:
        steps = model.fixed_steps or model.reference_steps
        return f"its input fixes the sequence length to {steps} steps, and generating makes it longer"
    if model.sequence_inputs:
        return (f"its other sequence input {model.sequence_inputs[0].name!r} has the main input's time axis, "
                "and nothing generates it")
    if model.generation is not None:
        return ""
    if model.input_vocab is not None or not model.input_dtype.startswith("float"):
        return model.generation_refusal or (
            f"its input is ids ({model.input_dtype}) and its output ({list(_first_output_shape(model))}, "
            f"{_first_output_dtype(model)}) is no distribution over them")
    shape, dtype = _first_output_shape(model), _first_output_dtype(model)
    if shape != tuple(model.input_shape) or not dtype.startswith("float"):
        return (f"its output has {list(shape)} {dtype} values per step and its input {list(model.input_shape)} "
                f"{model.input_dtype}: a fed-back output needs the input's feature shape")
    return ""


def scores_of(outputs, scores: Scores):
    """What the sampler reads: log-probabilities for probabilities, logits as they are (float32)."""
    outputs = tf.cast(outputs, tf.float32)
    if scores is Scores.PROBABILITIES:
        return tf.math.log(outputs)  # 0 -> -inf: never drawn
    return outputs


def choose(scores, temperature, top_k, seed, index):
    """The next ids `[B]` int32: argmax where `temperature` is 0, else drawn from `scores / temperature`
    kept to the `top_k` largest (0: all), with stateless ops seeded by (`seed`, `index`)."""
    vocab = tf.shape(scores)[-1]
    k = tf.where(top_k > 0, top_k, vocab)
    kth = tf.math.top_k(scores, k=k, sorted=True).values[:, -1:]
    kept = tf.where(scores >= kth, scores, tf.fill(tf.shape(scores), float("-inf")))
    warm = temperature > 0
    divided = kept / tf.where(warm, temperature, 1.0)
    pair = tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])
    sampled = tf.random.stateless_categorical(divided, 1, seed=pair, dtype=tf.int32)[:, 0]
    greedy = tf.argmax(scores, axis=-1, output_type=tf.int32)
    return tf.where(warm, sampled, greedy)


def _desc(name: str, shape, dtype: str) -> TensorDesc:
    return TensorDesc(name=name, shape=tuple(shape), dtype=dtype)


def signature_descs(model: StepModel, spec: GenerateSpec, *,
                    from_states: bool = False) -> tuple[list[TensorDesc], list[TensorDesc]]:
    """The inputs and outputs of `generate`, by serving key (`from_states`: of `generate_from`, which takes
    the states, as `stream` does, instead of what `initial_state` takes)."""
    ids = spec.feedback is Feedback.IDS
    prompt = (_desc("prompt", (None, None), "int32") if ids
              else _desc("prompt", (None, None, *model.input_shape), model.input_dtype))
    knobs = [_desc("temperature", (), "float32"), _desc("top_k", (), "int32"), _desc("seed", (), "int64")] if ids else []
    statics = [_desc(i.name, (None, *i.shape), i.dtype) for i in model.static_inputs]
    contexts = [_desc(i.name, (None, i.steps if i.steps > 0 else None, *i.shape), i.dtype) for i in model.context_inputs]
    states = [_desc(s.name, (None, *s.shape), s.dtype) for s in model.states]
    inputs = [prompt, _desc("max_new_tokens", (), "int32"), *knobs, *statics, *(states if from_states else contexts)]
    produced = (_desc("tokens", (None, None), "int32") if ids
                else _desc("predictions", (None, None, *_first_output_shape(model)), _first_output_dtype(model)))
    return inputs, [produced, *states]


def _checks(feed: dict, spec: GenerateSpec) -> list:
    """In-graph asserts: a bad value fails the call with INVALID_ARGUMENT naming the input."""
    bound = spec.max_new_tokens
    checks = [
        tf.debugging.assert_greater(tf.shape(feed["prompt"])[1], 0,
                                    message="input prompt must have at least one step (axis 1)"),
        tf.debugging.assert_non_negative(feed["max_new_tokens"], message="input max_new_tokens must be >= 0"),
        tf.debugging.assert_less_equal(feed["max_new_tokens"], tf.constant(bound, tf.int32),
                                       message=f"input max_new_tokens must be at most {bound} (the bound fixed at "
                                               "export, --max-new-tokens)"),
    ]
    if spec.feedback is Feedback.IDS:
        checks += [
            tf.debugging.assert_non_negative(feed["temperature"], message="input temperature must be >= 0 (0: greedy)"),
            tf.debugging.assert_non_negative(feed["top_k"], message="input top_k must be >= 0 (0: every id)"),
            tf.debugging.assert_less_equal(feed["top_k"], tf.constant(spec.vocab, tf.int32),
                                           message=f"input top_k must be at most the vocabulary, {spec.vocab}"),
            tf.debugging.assert_less(feed["prompt"], tf.constant(spec.vocab, tf.int32),
                                     message=f"input prompt: ids must be below the vocabulary, {spec.vocab}"),
            tf.debugging.assert_non_negative(feed["prompt"], message="input prompt: ids must be >= 0"),
        ]
    return checks


def _first(outputs, model: StepModel):
    return outputs[0] if model.outputs else outputs


def _fed_back(chosen, model: StepModel):
    """The next step's input from what was chosen (an id, or the output's features)."""
    return tf.cast(chosen, model.input_dtype)


def given_states(model: StepModel, feed: dict) -> tuple:
    """The states `generate_from` was given."""
    return tuple(feed[s.name] for s in model.states)


def generate_body(model: StepModel, spec: GenerateSpec, *, fused: bool = False, from_states: bool = False):
    """`feed -> {tokens|predictions, *final states}`: the prompt, then the step N times in one while_loop
    (`from_states`: from the states in `feed`, else from what `initial_state` makes of it)."""
    ids = spec.feedback is Feedback.IDS
    state_names = [s.name for s in model.states]
    state_shapes = [tf.TensorShape([None, *s.shape]) for s in model.states]
    out_shape = tf.TensorShape([None, *_first_output_shape(model)])
    chosen_shape = () if ids else tuple(_first_output_shape(model))
    chosen_dtype = tf.int32 if ids else tf.as_dtype(_first_output_dtype(model))

    def body(feed):
        with tf.control_dependencies(_checks(feed, spec)):  # everything below reads the checked values
            prompt = tf.identity(feed["prompt"])
            steps = tf.identity(feed["max_new_tokens"])
        batch = tf.shape(prompt)[0]
        statics = tuple(feed[i.name] for i in model.static_inputs)
        states = (given_states(model, feed) if from_states
                  else initial_states(model, batch, tuple(feed[i.name] for i in model.initial_inputs)))
        outputs, states = unroll(model, _fed_back(prompt, model), states, None, fused=fused, statics=statics)
        last = _first(outputs, model)[:, -1]
        step = model.bound_step()  # outside the loop: variables are read here, once
        chosen_ta = tf.TensorArray(chosen_dtype, size=steps, element_shape=tf.TensorShape([None, *chosen_shape]))

        def loop(i, y, ta, *state):
            if ids:
                chosen = choose(scores_of(y, spec.scores), feed["temperature"], feed["top_k"], feed["seed"], i)
            else:
                chosen = y
            x = _fed_back(chosen, model)
            new_y, new_state = step(x, tuple(state), None, statics) if statics else step(x, tuple(state))
            new_y = _first(new_y, model) if model.outputs else model.apply_head(new_y)
            new_state = tuple(new_state)
            for tensor, shape in zip(new_state, state_shapes):
                tensor.set_shape(shape)
            new_y = tf.cast(new_y, y.dtype)
            new_y.set_shape(out_shape)
            return (i + 1, new_y, ta.write(i, tf.cast(chosen, chosen_dtype)), *new_state)

        _, _, chosen_ta, *final = tf.while_loop(
            lambda i, *_: i < steps, loop, (tf.constant(0), last, chosen_ta, *states), maximum_iterations=steps)
        produced = tf.raw_ops.TensorListStack(  # element shape known at run time: N = 0 stacks too
            input_handle=chosen_ta.flow, element_shape=tf.stack([batch, *chosen_shape]),
            element_dtype=chosen_dtype, num_elements=-1)
        produced = tf.transpose(produced, [1, 0, *range(2, 2 + len(chosen_shape))])
        return {spec.output_key: produced, **dict(zip(state_names, final))}

    return body


def add_generate(traced: TracedExport, model: StepModel, spec: GenerateSpec, *, fused: bool = False) -> TracedExport:
    """`traced` with the `generate` and `generate_from` signatures added to its module, functions and specs."""
    for name, from_states in ((SignatureName.GENERATE.value, False), (SignatureName.GENERATE_FROM.value, True)):
        traced = _add(traced, name, model, spec, fused=fused, from_states=from_states)
    return traced


def _add(traced: TracedExport, name: str, model: StepModel, spec: GenerateSpec, *, fused: bool,
         from_states: bool) -> TracedExport:
    inputs, outputs = signature_descs(model, spec, from_states=from_states)
    names = [t.name for t in inputs]
    body = generate_body(model, spec, fused=fused, from_states=from_states)

    def fn(*args):
        return body(dict(zip(names, args)))

    function = tf.function(fn, input_signature=[tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name)
                                                for t in inputs], autograph=False)
    setattr(traced.module, name, function)
    concrete = function.get_concrete_function()
    return dataclasses.replace(
        traced,
        functions={**traced.functions, name: concrete},
        gradient_functions={**traced.gradient_functions, name: concrete},
        specs=(*traced.specs, SignatureSpec(name=name, inputs=tuple(inputs), outputs=tuple(outputs))),
    )
