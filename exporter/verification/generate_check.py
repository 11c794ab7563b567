"""The `generate` check rows, run in the fresh verification process.

1. greedy: `generate` at temperature 0 equals the source model's own loop (golden
   `generate/case/<i>/...`), id for id, for every batch size and prompt length captured;
2. seeded: two seeded, sampled calls agree, and equal the same sampler (`exporter.generate.choose`)
   driven through `stream` and `step` from Python (for a feedback model: the step loop's features);
3. states: the final states `generate` returns equal those of `stream` over prompt + what it generated,
   from `initial_state`;
4. continued: `generate_from` given the states `stream` left after the first part of a prompt, on the
   rest of it, equals the source model's own loop over the whole prompt (golden), for every case of
   at least two prompt steps, and its final states equal `stream`'s over prompt + generated.
"""

from __future__ import annotations

import numpy as np

from exporter.artifact.compare import compare, failed
from exporter.artifact.specs import CheckResult, Feedback, SignatureName, Tolerance

CHECK = "generate"
SIGNATURE = SignatureName.GENERATE.value
EXACT = Tolerance(atol=0.0, rtol=0.0)
# The sampled calls of rows 2 and 3.
SAMPLED = {"temperature": 0.9, "top_k": 4, "seed": 2024}


def _section(golden: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix) and "/" not in k[len(prefix):]}


class GenerateCheck:
    """The rows of one export's `generate` (`checker`: the worker's `_Checker`)."""

    def __init__(self, checker):
        self.checker = checker
        self.tf = checker.tf
        self.manifest = checker.manifest
        self.spec = checker.manifest.generate
        self.ids = self.spec.feedback is Feedback.IDS
        self.generate = checker.signature(SIGNATURE)
        self.state_names = [s.name for s in self.manifest.states]
        self.side_names = [i.name for i in (*self.manifest.static_inputs, *self.manifest.context_inputs)]

    def add(self, row: CheckResult) -> None:
        self.checker.add(row)

    def call(self, feed: dict, steps: int, *, temperature=0.0, top_k=0, seed=0) -> dict:
        tf = self.tf
        knobs = dict(temperature=tf.constant(temperature, tf.float32), top_k=tf.constant(top_k, tf.int32),
                     seed=tf.constant(seed, tf.int64)) if self.ids else {}
        outputs = self.generate(max_new_tokens=tf.constant(steps, tf.int32), **knobs,
                                **{k: tf.constant(v) for k, v in feed.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    def cases(self) -> list[tuple[int, dict, np.ndarray]]:
        found = sorted({int(k.split("/")[2]) for k in self.checker.golden if k.startswith("generate/case/")})
        return [(i, _section(self.checker.golden, f"generate/case/{i}/in/"), self.checker.golden[f"generate/case/{i}/want"])
                for i in found]

    def label(self, feed: dict) -> str:
        prompt = feed["prompt"]
        return f"B={prompt.shape[0]} P={prompt.shape[1]}"

    def run(self) -> None:
        cases = self.cases()
        if not cases:
            self.add(CheckResult.inapplicable(CHECK, SIGNATURE, "no source model to hold generate to (a factory)"))
            return
        key = self.spec.output_key
        tolerance = EXACT if self.ids else self.checker.tol
        for _, feed, want in cases:
            got = self.call(feed, want.shape[1])
            self.add(compare(CHECK, f"greedy vs source {self.label(feed)}", key, got[key], want, tolerance))
        _, feed, want = cases[-1]
        steps = want.shape[1]
        knobs = SAMPLED if self.ids else {}
        first = self.call(feed, steps, **knobs)
        again = self.call(feed, steps, **knobs)
        label = self.label(feed)
        self.add(compare(CHECK, f"seeded twice {label}", key, again[key], first[key], EXACT))
        self.add(compare(CHECK, f"seeded vs step loop {label}", key, first[key], self.step_loop(feed, steps)[key],
                         tolerance))
        self.continued(cases, key, tolerance)
        self.states(feed, first, label)

    def initial(self, feed: dict) -> dict:
        tf = self.tf
        initial_state = self.checker.signature(SignatureName.INITIAL_STATE.value)
        batch = tf.constant(feed["prompt"].shape[0], tf.int32)
        return dict(initial_state(batch_size=batch, **{n: tf.constant(feed[n]) for n in self.side_names}))

    def stream(self, feed: dict, inputs: np.ndarray, states: dict) -> dict:
        tf = self.tf
        stream = self.checker.signature(SignatureName.STREAM.value)
        dtype = self.manifest.signature(SignatureName.STREAM.value).inputs[0].dtype
        statics = {i.name: tf.constant(feed[i.name]) for i in self.manifest.static_inputs}
        if self.manifest.masked:  # every step is real: `generate` feeds no padding
            statics["lengths"] = tf.fill([inputs.shape[0]], tf.constant(inputs.shape[1], tf.int32))
        return dict(stream(inputs=tf.constant(inputs.astype(dtype)), **statics, **states))

    def step_loop(self, feed: dict, steps: int) -> dict:
        """The same loop from Python: `stream` over the prompt, then `step` feeding back what the same
        seeded sampler chose (ids) or the step's features."""
        from exporter.generate import choose, scores_of

        tf = self.tf
        output_key, step_key, _ = self.manifest.output_keys()[0]
        result = self.stream(feed, feed["prompt"], self.initial(feed))
        states = {n: result[n] for n in self.state_names}
        y = result[output_key][:, -1]
        step = self.checker.signature(SignatureName.STEP.value)
        x_dtype = self.manifest.signature(SignatureName.STEP.value).inputs[0].dtype
        statics = {i.name: tf.constant(feed[i.name]) for i in self.manifest.static_inputs}
        chosen = []
        for index in range(steps):
            if self.ids:
                pick = choose(scores_of(y, self.spec.scores), tf.constant(SAMPLED["temperature"], tf.float32),
                              tf.constant(SAMPLED["top_k"], tf.int32), tf.constant(SAMPLED["seed"], tf.int64),
                              tf.constant(index, tf.int32))
            else:
                pick = y
            chosen.append(pick.numpy())
            result = step(x=tf.cast(pick, x_dtype), **statics, **states)
            states = {n: result[n] for n in self.state_names}
            y = result[step_key]
        return {self.spec.output_key: np.stack(chosen, axis=1)}

    def continued(self, cases, key: str, tolerance) -> None:
        """Row 4 (module docstring): the greedy cases again, the prompt's first half through `stream` first."""
        tf = self.tf
        generate_from = self.checker.signature(SignatureName.GENERATE_FROM.value)
        for _, feed, want in cases:
            prompt = feed["prompt"]
            if prompt.shape[1] < 2:
                continue
            half = prompt.shape[1] // 2
            streamed = self.stream(feed, prompt[:, :half], self.initial(feed))
            knobs = dict(temperature=tf.constant(0.0), top_k=tf.constant(0, tf.int32),
                         seed=tf.constant(0, tf.int64)) if self.ids else {}
            statics = {i.name: tf.constant(feed[i.name]) for i in self.manifest.static_inputs}
            got = generate_from(prompt=tf.constant(prompt[:, half:]), max_new_tokens=tf.constant(want.shape[1]),
                                **knobs, **statics, **{n: streamed[n] for n in self.state_names})
            label = f"continued after {half} streamed {self.label(feed)}"
            self.add(compare(CHECK, label, key, got[key].numpy(), want, tolerance))
            # and its final states: `stream` over the whole prompt + what it generated, from `initial_state`
            produced = got[key].numpy().astype(prompt.dtype)
            whole = self.stream(feed, np.concatenate([prompt, produced], axis=1), self.initial(feed))
            for name in self.state_names:
                self.add(compare(CHECK, label, name, got[name].numpy(), whole[name].numpy(), self.checker.tol))

    def states(self, feed: dict, generated: dict, label: str) -> None:
        """`generate`'s final states against `stream` over prompt + generated, from `initial_state`."""
        produced = generated[self.spec.output_key]
        sequence = np.concatenate([feed["prompt"], produced.astype(feed["prompt"].dtype)], axis=1)
        want = self.stream(feed, sequence, self.initial(feed))
        for name in self.state_names:
            if name not in generated:
                self.add(failed(CHECK, f"states vs stream {label}", name, "missing from generate's outputs"))
                continue
            self.add(compare(CHECK, f"states vs stream {label}", name, generated[name], want[name].numpy(),
                             self.checker.tol))


def check_generate(checker) -> None:
    """Every `generate` row of this export (none when it has no `generate`)."""
    if checker.manifest.generate is None:
        return
    if SIGNATURE not in checker.loaded.signatures:
        checker.add(failed(CHECK, SIGNATURE, "*", f"signature missing after reload; available: "
                           f"{sorted(checker.loaded.signatures)}"))
        return
    GenerateCheck(checker).run()
