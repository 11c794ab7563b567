"""Goldens of the `generate` signature, from the source model (checked in a fresh process).

`generate/in/*`, `generate/out/*`: a seeded, sampled call of the traced signature (the reload check
then shows sampling is reproducible across reloads); `generate_from/...`: the same prompt again from
the states that call ended in. `generate/case/<i>/in/*` and
`generate/case/<i>/want`: prompts of several batch sizes and lengths and what the source model's
own greedy loop makes of them: run the model on the sequence, append the argmax of its last step
(or the last step's features), run it again on the longer sequence.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from exporter.artifact.specs import ExportOptions, Feedback, GenerateSpec
from exporter.probes import context_probes, static_probes
from exporter.step_model import StepModel

# (batch, prompt length) of the greedy cases; each generates GREEDY_TOKENS new steps.
GREEDY_CASES = ((1, 1), (2, 4), (3, 7))
GREEDY_TOKENS = 8
# The sampled call of the reload golden.
SAMPLED = {"temperature": 1.0, "seed": 7, "tokens": 6, "top_k": 5}


def _prompt(model: StepModel, spec: GenerateSpec, rng, batch: int, steps: int) -> np.ndarray:
    if spec.feedback is Feedback.IDS:
        return rng.integers(1, spec.vocab, size=(batch, steps)).astype(np.int32)
    return rng.normal(size=(batch, steps, *model.input_shape)).astype(model.input_dtype)


def _side_inputs(model: StepModel, rng, batch: int, steps: int) -> dict[str, np.ndarray]:
    """The static and context inputs of one call (as `initial_state` takes them), drawn as the goldens'
    probes are; contexts unpadded, the values `generate`'s goldens have always had."""
    return {**static_probes(model.static_inputs, rng, batch),
            **context_probes(model.context_inputs, rng, batch, steps, padded=False)}


def source_greedy(model: StepModel, spec: GenerateSpec, prompt: np.ndarray, sides: dict, new: int) -> np.ndarray:
    """The source model's own loop: `new` times, run it on the whole sequence so far and append the argmax
    of its last step (the last step's features for a feedback model). Returns `[B, new, ...]`."""
    sequence = prompt
    chosen = []
    extras = tuple(tf.constant(sides[i.name]) for i in (*model.static_inputs, *model.context_inputs))
    for _ in range(new):
        inputs = tf.constant(sequence.astype(model.input_dtype))
        outputs = model.reference_fn(inputs, None, extras) if extras else model.reference_fn(inputs, None)
        if model.outputs:
            outputs = outputs[model.outputs[0].name]
        outputs = np.asarray(outputs)
        rank = 1 + len(model.outputs[0].shape if model.outputs else model.output_shape)
        last = outputs[:, -1] if outputs.ndim > rank else outputs  # a last-step-only output is the last step
        following = (np.argmax(last, axis=-1).astype(np.int32) if spec.feedback is Feedback.IDS
                     else last.astype(prompt.dtype))
        sequence = np.concatenate([sequence, following[:, None]], axis=1)
        chosen.append(following)
    return np.stack(chosen, axis=1)


def capture_generate(model: StepModel, traced, spec: GenerateSpec, options: ExportOptions) -> dict[str, np.ndarray]:
    """The `generate` goldens (module docstring)."""
    rng = np.random.default_rng(options.seed + 31)
    golden: dict[str, np.ndarray] = {}
    ids = spec.feedback is Feedback.IDS
    function = traced.functions["generate"]
    names = [t.name for t in next(s for s in traced.specs if s.name == "generate").inputs]

    batch, steps = options.probe_batch, options.probe_steps
    feed = {"prompt": _prompt(model, spec, rng, batch, steps),
            "max_new_tokens": np.int32(min(SAMPLED["tokens"], spec.max_new_tokens))}
    if ids:
        feed.update(temperature=np.float32(SAMPLED["temperature"]), top_k=np.int32(min(SAMPLED["top_k"], spec.vocab)),
                    seed=np.int64(SAMPLED["seed"]))
    feed.update(_side_inputs(model, rng, batch, steps))
    outputs = function(*[tf.constant(feed[n]) for n in names])
    golden.update({f"generate/in/{k}": np.asarray(v) for k, v in feed.items()})
    golden.update({f"generate/out/{k}": v.numpy() for k, v in outputs.items()})
    # `generate_from` going on from where that call ended (its reload golden): the same prompt again.
    from_names = [t.name for t in next(s for s in traced.specs if s.name == "generate_from").inputs]
    carried = {k: v.numpy() for k, v in outputs.items()}
    from_feed = {n: (carried[n] if n in carried else feed[n]) for n in from_names}
    from_outputs = traced.functions["generate_from"](*[tf.constant(from_feed[n]) for n in from_names])
    golden.update({f"generate_from/in/{k}": np.asarray(v) for k, v in from_feed.items()})
    golden.update({f"generate_from/out/{k}": v.numpy() for k, v in from_outputs.items()})

    if model.reference_fn is None:
        return golden
    new = min(GREEDY_TOKENS, spec.max_new_tokens)
    for i, (rows, length) in enumerate(GREEDY_CASES):
        rows = model.reference_batch or rows
        prompt = _prompt(model, spec, rng, rows, length)
        sides = _side_inputs(model, rng, rows, length)
        golden[f"generate/case/{i}/in/prompt"] = prompt
        golden.update({f"generate/case/{i}/in/{k}": v for k, v in sides.items()})
        golden[f"generate/case/{i}/want"] = source_greedy(model, spec, prompt, sides, new)
    return golden
