"""Record reference inputs, outputs and gradients from the in-memory model (`golden.npz`).

Two kinds of reference, both checked later in a fresh process:
- `<signature>/...`: what the traced signatures computed before saving (reload check);
- `reference/...`: what the SOURCE model's own full-sequence call computed (ground truth),
  every output by its key (`outputs`, or each name of a model with several outputs).

Keys: `<sig>/in/<key>`, `<sig>/out/<key>`, `<sig>/w/<key>` (loss weights),
`<sig>/grad/<key>`, `<sig>/grad_var/<i>`, `var/<i>` (trained weights); `changed/<key>/in` and
`changed/<key>/out/<output>`: the `serving_default` probe with input `<key>` alone changed, and
what the source model computes on it (the `inputs` check); `higher/...`: the
source's second derivatives (`gradients.second_order`) on the `serving_default` probe, with
its loss weights `higher/w/<key>` and vector `higher/v`, or `higher/error` where TF has none.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from exporter.artifact.specs import POSITION_STATE, ExportOptions, GenerateSpec, SignatureName
from exporter.generate_reference import capture_generate
from exporter.gradients import is_float, outputs_and_gradients, second_order
from exporter.probes import context_probes, mask_probe, static_probes, timed_probe
from exporter.step_model import StepModel
from exporter.trace import TracedExport

GRADIENT_SIGNATURES = (SignatureName.PREDICT, SignatureName.STREAM, SignatureName.STEP)


def probe_inputs(model: StepModel, options: ExportOptions) -> dict[str, np.ndarray]:
    """Random probe inputs for `serving_default`.

    A masked model's probe marks padded steps in the inputs the way users pad: row 0
    is whole, row 1 is pre-padded (`keras.utils.pad_sequences`'s default) with
    `lengths` = T, row 2 has a hole in the middle and is post-padded with `lengths`
    short of T, further rows are post-padded with ragged `lengths`. So the checks see
    every mask pattern Keras computes from the inputs, not only `lengths`.
    """
    rng = np.random.default_rng(options.seed)
    batch = model.reference_batch or options.probe_batch
    steps = options.probe_steps
    shape = (batch, steps, *model.input_shape)
    if model.text_input:
        return {"inputs": text_probe(model, (batch, *model.input_shape), rng, steps)}
    if model.text_tokens:
        return {"inputs": text_probe(model, shape, rng, 1)}
    if model.input_dtype.startswith("int"):
        inputs = rng.integers(1, model.input_vocab or 2, size=shape).astype(model.input_dtype)
    else:
        inputs = rng.normal(size=shape).astype(model.input_dtype)
    feed = {"inputs": inputs, **static_probes(model.static_inputs, rng, batch)}
    feed.update(_sequence_probes(model, rng, batch, steps))
    feed.update(context_probes(model.context_inputs, rng, batch, steps, padded=True))
    if model.masked:
        pad = model.mask_pad_value
        lengths = rng.integers(1, steps + 1, size=batch).astype(np.int32)
        lengths[: min(batch, 2)] = steps
        if batch > 1:
            inputs[1, : max(1, steps // 3)] = pad
        if batch > 2:
            lengths[2] = max(2, steps - 1)
            inputs[2, min(1, steps - 1) : min(1, steps - 1) + 1] = pad
        for row, length in enumerate(lengths):
            inputs[row, length:] = pad
        feed["lengths"] = lengths
    return feed


def text_probe(model: StepModel, shape: tuple, rng, words: int) -> np.ndarray:
    """Sentences of 1 to `words` words of the model's vocabulary (and an unknown one), one per element:
    rows of other lengths, so the padding and the mask it makes are exercised (`words=1`: tokens)."""
    vocabulary = [*model.text_vocabulary, "zyzzyva"]
    count = int(np.prod(shape))
    lengths = [words, 1, max(1, words // 2), *rng.integers(1, words + 1, size=max(0, count - 3))][:count]
    sentences = [" ".join(rng.choice(vocabulary, size=n)) for n in lengths]
    return np.array([s.encode() for s in sentences], dtype=object).reshape(shape)


def _sequence_probes(model: StepModel, rng, batch: int, steps: int) -> dict[str, np.ndarray]:
    """The other sequence inputs' probes, `[B, T, ...]` each (ids drawn from their vocabulary; a mask given
    as an input with false steps at the start, the middle and the end)."""
    return {spec.name: timed_probe(spec, rng, batch, spec.steps if spec.steps and spec.steps > 0 else steps)
            for spec in model.sequence_inputs}  # a whole-sequence input may have its own fixed length


def _loss_weights(rng, outputs: dict) -> dict[str, np.ndarray]:
    return {k: rng.normal(size=np.shape(v)) for k, v in outputs.items() if is_float(v)}


def _feed_for(signature: SignatureName, model: StepModel, predict_feed: dict, rng) -> dict:
    inputs = predict_feed["inputs"]
    batch = inputs.shape[0]
    room = min(3, (model.max_length or inputs.shape[1] + 3) - inputs.shape[1])  # positions left for the probe
    states = {  # a step count as whole numbers, each row its own (a row's cache ahead of another's)
        s.name: (rng.integers(0, max(1, room), size=(batch, *s.shape)) if s.name == POSITION_STATE
                 else 0.5 * rng.normal(size=(batch, *s.shape))).astype(s.dtype) for s in model.states
    }
    if signature is SignatureName.PREDICT or signature is SignatureName.INPUT_GRADIENTS:
        return dict(predict_feed)
    contexts = {i.name for i in model.context_inputs}  # read by `initial_state` only
    if signature is SignatureName.STREAM:
        return {**{k: v for k, v in predict_feed.items() if k not in contexts}, **states}
    statics = {i.name: predict_feed[i.name] for i in model.static_inputs}
    if signature is SignatureName.STEP:
        slices = {i.name: predict_feed[i.name][:, 0] for i in model.sequence_inputs}
        return {"x": inputs[:, 0], **slices, **statics, **states}
    return {"batch_size": np.int32(batch), **statics, **{k: predict_feed[k] for k in contexts}}


def capture(model: StepModel, traced: TracedExport, options: ExportOptions,
            generate: GenerateSpec | None = None) -> dict[str, np.ndarray]:
    """Runs every signature (and the source model) on probe inputs; returns the golden arrays.

    `generate`: the export's `generate` signature, whose goldens `exporter.generate_reference` captures."""
    rng = np.random.default_rng(options.seed + 1)
    predict_feed = probe_inputs(model, options)
    golden: dict[str, np.ndarray] = {}
    variables = list(model.trainable_variables)
    for i, variable in enumerate(variables):
        golden[f"var/{i}"] = variable.numpy()

    for spec in traced.specs:
        signature = SignatureName(spec.name)
        if signature in (SignatureName.GENERATE, SignatureName.GENERATE_FROM):  # exporter.generate_reference's
            continue
        names = [t.name for t in spec.inputs]
        feed = _feed_for(signature, model, predict_feed, rng)
        call = _caller(traced.functions[spec.name], names)
        for key, value in feed.items():
            golden[f"{spec.name}/in/{key}"] = np.asarray(value)
        outputs = {k: v.numpy() for k, v in call({k: tf.constant(v) for k, v in feed.items()}).items()}
        if signature in GRADIENT_SIGNATURES:
            weights = _loss_weights(rng, outputs)
            _, input_grads, var_grads = outputs_and_gradients(
                _caller(traced.gradient_functions[spec.name], names), feed, weights, variables
            )
            for key, value in weights.items():
                golden[f"{spec.name}/w/{key}"] = value
            for key, value in input_grads.items():
                golden[f"{spec.name}/grad/{key}"] = value
            for i, value in enumerate(var_grads):
                golden[f"{spec.name}/grad_var/{i}"] = value
        for key, value in outputs.items():
            golden[f"{spec.name}/out/{key}"] = value

    if model.reference_fn is not None:
        golden.update(_reference(model, predict_feed, rng))
        golden.update(_changed_inputs(model, predict_feed, rng))
    if options.check_hvp:
        golden.update(_higher_order(model, traced, predict_feed, golden, rng))
    if generate is not None:
        golden.update(capture_generate(model, traced, generate, options))
    return golden


def _higher_order(model: StepModel, traced: TracedExport, feed: dict, golden: dict, rng) -> dict[str, np.ndarray]:
    """The source's second derivatives (`gradients.second_order`) on the `serving_default` probe: the
    source model's own call where there is one, else the traced while_loop (a factory without one)."""
    if model.reference_fn is not None:
        prefix, call = "reference/w/", _reference_call(model)
        variables = list(model.reference_variables or model.trainable_variables)
    else:
        name = SignatureName.PREDICT.value
        spec = next(s for s in traced.specs if s.name == name)
        prefix, call = f"{name}/w/", _caller(traced.higher_order_function(name), [t.name for t in spec.inputs])
        variables = list(model.trainable_variables)
    outputs = {o.name for o in model.outputs} or {"outputs"}
    weights = {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix) and k[len(prefix):] in outputs}
    vector = rng.normal(size=feed["inputs"].shape)
    recorded = {"higher/v": vector, **{f"higher/w/{k}": v for k, v in weights.items()}}
    try:
        derivatives = second_order(call, feed, weights, vector, variables)
    except (LookupError, TypeError, ValueError, tf.errors.OpError) as exc:
        # Some ops have no second derivative in TF: record why, the check reports it.
        return recorded | {"higher/error": np.array(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")}
    return recorded | {f"higher/{k}": v for k, v in derivatives.items()}


def _caller(function, names: list[str]):
    return lambda feed: function(*[feed[n] for n in names])


def _reference_call(model: StepModel):
    """The source model's own call on a feed of tensors, its outputs by key."""

    def call(tensors):
        if model.extra_inputs:
            extras = tuple(tensors[i.name] for i in model.extra_inputs)
            outputs = model.reference_fn(tensors["inputs"], tensors.get("lengths"), extras)
        else:
            outputs = model.reference_fn(tensors["inputs"], tensors.get("lengths"))
        if not model.outputs:
            return {"outputs": outputs}
        return {o.name: outputs[o.name] for o in model.outputs}

    return call


def _reference(model: StepModel, feed: dict, rng) -> dict[str, np.ndarray]:
    """The source model's own outputs and gradients on the probe inputs."""
    variables = list(model.reference_variables or model.trainable_variables)
    call = _reference_call(model)
    first = call({k: tf.constant(v) for k, v in feed.items()})
    weights = _loss_weights(rng, {k: v.numpy() for k, v in first.items()})
    outputs, input_grads, var_grads = outputs_and_gradients(call, feed, weights, variables)
    golden = {f"reference/out/{k}": v for k, v in outputs.items()}
    golden.update({f"reference/w/{k}": v for k, v in weights.items()})
    golden.update({f"reference/grad/{k}": v for k, v in input_grads.items()})
    golden.update({f"reference/grad_var/{i}": v for i, v in enumerate(var_grads)})
    return golden


def changed_input(model: StepModel, key: str, value: np.ndarray, rng) -> np.ndarray:
    """Another value of `serving_default`'s input `key` of the kind the model reads there, so that the
    source's outputs move: new random values (padded steps of a model that masks its inputs kept
    padded), new ids, another pattern of false steps for a mask, shorter `lengths`."""
    spec = next((i for i in model.extra_inputs if i.name == key), None)
    if key == "lengths":
        return np.maximum(1, value - np.maximum(1, value // 3)).astype(value.dtype)
    if spec is not None and spec.mask:
        return mask_probe(value.shape[0], value.shape[1], rng, shift=1).astype(value.dtype)
    if value.dtype == bool:
        return ~value
    if value.dtype == object:  # text: other sentences
        return text_probe(model, value.shape, rng, words=max(len(v.split()) for v in value.ravel()))
    vocab = model.input_vocab if key == "inputs" else (spec.vocab if spec is not None else None)
    if np.issubdtype(value.dtype, np.integer):
        new = rng.integers(1 if key == "inputs" or vocab else 0, max(2, vocab or 2), size=value.shape)
        new = np.where(new == value, (new + 1) % max(2, vocab or 2), new)
    else:
        new = rng.normal(size=value.shape)
    new = new.astype(value.dtype)
    if key == "inputs" and model.masked:  # a padded step stays padded: the mask is another input's change
        padded = np.all(value.reshape(*value.shape[:2], -1) == model.mask_pad_value, axis=-1)
        new[padded] = value[padded]
    return new


def _changed_inputs(model: StepModel, feed: dict, rng) -> dict[str, np.ndarray]:
    """For each input of `serving_default`: the probe with that input alone changed (`changed_input`),
    and the source model's outputs on it."""
    call = _reference_call(model)
    golden = {}
    for key in sorted(feed):
        changed = changed_input(model, key, feed[key], rng)
        values = {**feed, key: changed}
        if key == "lengths":  # what shorter `lengths` mean: the source sees those steps as padding
            values["inputs"] = feed["inputs"].copy()
            for row, length in enumerate(changed):
                values["inputs"][row, length:] = model.mask_pad_value
        outputs = call({k: tf.constant(v) for k, v in values.items()})
        golden[f"changed/{key}/in"] = changed
        golden.update({f"changed/{key}/out/{k}": np.asarray(v) for k, v in outputs.items()})
    return golden
