"""The checks of design.md, run in a FRESH process: `python -m exporter.verification.worker DIR... --out F`.

Fresh because a `tf.custom_gradient` registered by the exporting process would
mask a SavedModel that lost its custom gradients; only a new process sees what
TF Serving will see. Writes `{dir: {checks, timings, properties, peak_rss_mb}}` as
JSON to `--out`, and one JSON progress line per check started on stdout.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.artifact.compare import compare, failed
from exporter.artifact.golden_io import load as load_golden
from exporter.artifact.manifest import read_manifest
from exporter.artifact.names import no_xla_name, unfused_name
from exporter.artifact.paths import golden_path, manifest_path
from exporter.artifact.specs import POSITION_STATE, CheckResult, Manifest, SignatureName
from exporter.verification.batch import offdiagonal_blocks
from exporter.verification.run import PARENT_PID_VARIABLE
from exporter.verification.explain import explain
from exporter.verification.generate_check import check_generate
from exporter.verification.foreign import generic_checks
from exporter.vocabulary import vocabulary_checks


def _section(golden: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix) and "/" not in k[len(prefix) :]}


class _Checker:
    def __init__(self, export_dir: Path, manifest: Manifest, golden: dict):
        import tensorflow as tf

        self.tf = tf
        self.export_dir = Path(export_dir)
        self.manifest = manifest
        self.golden = golden
        self.tol = manifest.options.tolerance
        self.grad_tol = manifest.options.grad_tolerance
        self.results: list[CheckResult] = []
        self.loaded = tf.saved_model.load(str(export_dir))
        self.variables = list(getattr(self.loaded, "trainable_variables", []))
        self.properties_rows = []

    def signature(self, name: str):
        return self.loaded.signatures[name]

    def add(self, result: CheckResult):
        self.results.append(result)

    def compare_many(self, check, signature, got: dict, want: dict, tolerance, prefix=""):
        for key in sorted(want):
            if key not in got:
                self.add(failed(check, signature, prefix + key, "missing from the reloaded outputs"))
                continue
            self.add(compare(check, signature, prefix + key, got[key], want[key], tolerance))

    def compare_gradients(self, check, signature, input_grads, var_grads, prefix):
        want = _section(self.golden, f"{prefix}/grad/")
        self.compare_many(check, signature, input_grads, want, self.grad_tol, prefix="d/")
        for i, grad in enumerate(var_grads):
            key = f"{prefix}/grad_var/{i}"
            if key in self.golden:
                name = self.manifest.trainable_variables[i]
                self.add(compare(check, signature, f"d/{name}", grad, self.golden[key], self.grad_tol))

    def gradient_caller(self, name: str):
        """The function gradients go through: the signature, or for a `--jit` export its twin
        without XLA (XLA cannot hand a TensorList to TF's backward pass)."""
        if not self.manifest.options.jit or not hasattr(self.loaded, no_xla_name(name)):
            signature = self.signature(name)
            return lambda f: signature(**f)
        function = getattr(self.loaded, no_xla_name(name))
        names = [t.name for t in self.manifest.signature(name).inputs]
        return lambda f: function(*[f[n] for n in names])

    def higher_order_caller(self, name: str):
        """The function second derivatives go through: a fused signature's while_loop twin
        (TF defines no gradient of `BlockLSTMGrad`), else `gradient_caller`."""
        twin = unfused_name(name)
        if self.manifest.options.fused and twin in self.loaded.signatures:
            signature = self.signature(twin)
            return lambda f: signature(**f)
        return self.gradient_caller(name)

    def run_with_gradients(self, check_prefix, signature, call, feed, weights, golden_prefix, grad_call=None):
        """Forward (`call`) + gradients (`grad_call`, default `call`); a gradient failure (e.g. a
        lost custom gradient) is a failed row, and the forward outputs are still returned."""
        from exporter.gradients import outputs_and_gradients

        tensors = {k: self.tf.constant(v) for k, v in feed.items()}
        outputs = None
        try:
            outputs, input_grads, var_grads = outputs_and_gradients(grad_call or call, feed, weights, self.variables)
        except Exception as exc:  # noqa: BLE001  any error here is the finding we report
            self.add(failed("gradients", signature, "*", explain(exc)))
        else:
            self.compare_gradients(f"{check_prefix}gradients", signature, input_grads, var_grads, golden_prefix)
        if outputs is None or grad_call is not None:
            outputs = {k: v.numpy() for k, v in call(tensors).items()}
        return outputs

    # --- the checks -------------------------------------------------------------

    def weights(self):
        if len(self.variables) != len(self.manifest.trainable_variables):
            self.add(failed("weights", "-", "*", f"{len(self.variables)} trainable variables after reload, "
                            f"manifest lists {len(self.manifest.trainable_variables)}"))
            return
        exact = type(self.tol)(atol=0.0, rtol=0.0)
        for i, variable in enumerate(self.variables):
            self.add(compare("weights", "-", self.manifest.trainable_variables[i], variable.numpy(),
                             self.golden[f"var/{i}"], exact))
        for row in vocabulary_checks(self.export_dir, self.manifest.vocabularies, self.golden):
            self.add(row)  # what the model is made of besides its weights: its lookup tables' files

    def reload_and_gradients(self):
        for spec in self.manifest.signatures:
            name = spec.name
            if name not in self.loaded.signatures:
                self.add(failed("reload", name, "*", f"signature missing after reload; "
                                f"available: {sorted(self.loaded.signatures)}"))
                continue
            function = self.signature(name)
            call = lambda f, fn=function: fn(**f)  # noqa: E731
            feed = _section(self.golden, f"{name}/in/")
            weights = _section(self.golden, f"{name}/w/")
            try:
                if weights:
                    outputs = self.run_with_gradients("", name, call, feed, weights, name,
                                                      grad_call=self.gradient_caller(name))
                    if self.manifest.options.jit:
                        plain = self.gradient_caller(name)({k: self.tf.constant(v) for k, v in feed.items()})
                        self.compare_many("xla", name, outputs, {k: v.numpy() for k, v in plain.items()}, self.tol)
                else:
                    outputs = {k: v.numpy() for k, v in call({k: self.tf.constant(v) for k, v in feed.items()}).items()}
            except Exception as exc:  # noqa: BLE001
                self.add(failed("reload", name, "*", explain(exc)))
                continue
            self.compare_many("reload", name, outputs, _section(self.golden, f"{name}/out/"), self.tol)

    def ground_truth(self):
        want = _section(self.golden, "reference/out/")
        if not want:
            return
        predict = self.signature(SignatureName.PREDICT.value)
        feed = _section(self.golden, f"{SignatureName.PREDICT.value}/in/")
        weights = _section(self.golden, "reference/w/")
        keys = sorted(want)
        call = lambda f: {k: v for k, v in predict(**f).items() if k in keys}  # noqa: E731
        plain = self.gradient_caller(SignatureName.PREDICT.value)
        grad_call = lambda f: {k: v for k, v in plain(f).items() if k in keys}  # noqa: E731
        outputs = self.run_with_gradients("source ", "serving_default", call, feed, weights, "reference",
                                          grad_call=grad_call)
        self.compare_many("source", "serving_default", outputs, want, self.tol)

    def every_input(self):
        """Each input of `serving_default` changed alone (a mask's false steps moved, `lengths` shortened,
        a static input redrawn, ...): the export's outputs move as the source's do. An export that
        ignores an input matches the source on one probe where that input does not matter, never here.

        The tolerance of a row is the output tolerance, twice (a difference of two outputs), at the
        scale of the outputs compared."""
        keys = sorted({k.split("/")[1] for k in self.golden if k.startswith("changed/")})
        if not keys:
            return
        name = SignatureName.PREDICT.value
        predict = self.signature(name)
        feed = _section(self.golden, f"{name}/in/")
        want_base = _section(self.golden, "reference/out/")

        def run(values: dict) -> dict:
            outputs = predict(**{k: self.tf.constant(v) for k, v in values.items()})
            return {k: outputs[k].numpy() for k in want_base}

        got_base = run(feed)
        for key in keys:
            got = run({**feed, key: self.golden[f"changed/{key}/in"]})
            for output in sorted(want_base):
                want = self.golden[f"changed/{key}/out/{output}"]
                scale = float(max(np.max(np.abs(want), initial=0.0), np.max(np.abs(want_base[output]), initial=0.0)))
                tolerance = type(self.tol)(atol=2 * (self.tol.atol + self.tol.rtol * scale), rtol=0.0)
                moved_export = got[output].astype(np.float64) - got_base[output]
                moved_source = want.astype(np.float64) - want_base[output]
                label = f"{key} -> {output}" if len(want_base) > 1 else key  # the changed input (-> the output)
                row = compare("inputs", name, label, moved_export, moved_source, tolerance)
                if not row.passed:
                    row = dataclasses.replace(row, message=(
                        f"changing {key!r} moved the source's {output!r} by up to "
                        f"{np.max(np.abs(moved_source), initial=0.0):.3g} and the export's by up to "
                        f"{np.max(np.abs(moved_export), initial=0.0):.3g}: the export does not use {key!r} as "
                        f"the source does ({row.message})"))
                self.add(row)

    def chained_stream(self, bounds, stream: Callable[[dict], dict]) -> Callable[[dict], dict]:
        """`serving_default`'s outputs and final states from `stream` over the chunks `bounds` cuts the
        sequences into, the states threaded from `initial_state` (under the caller's tape: they may come
        from static inputs). Static inputs go with every chunk, `lengths` is cut with the steps."""
        tf = self.tf
        state_names = [s.name for s in self.manifest.states]
        static_names = [i.name for i in self.manifest.static_inputs]
        initial_names = [*static_names, *(i.name for i in self.manifest.context_inputs)]  # a context: here only
        sequence_names = ["inputs", *(i.name for i in self.manifest.sequence_inputs)]
        initial_state = self.signature(SignatureName.INITIAL_STATE.value)

        def chained(tensors):
            batch = tf.shape(tensors["inputs"])[0]
            states = dict(initial_state(batch_size=batch, **{n: tensors[n] for n in initial_names}))
            pieces = {key: [] for key, _, _ in self.manifest.output_keys()}
            for start, stop in zip(bounds[:-1], bounds[1:]):
                chunk = {**{n: tensors[n][:, start:stop] for n in sequence_names},
                         **{n: tensors[n] for n in static_names}, **states}
                if "lengths" in tensors:
                    chunk["lengths"] = tf.clip_by_value(tensors["lengths"] - start, 0, stop - start)
                result = stream(chunk)
                for key in pieces:
                    pieces[key].append(result[key])
                states = {n: result[n] for n in state_names}
            outputs = {}
            for key, _, last_step in self.manifest.output_keys():
                outputs[key] = tf.concat(pieces[key], axis=1)
                if last_step:
                    outputs[key] = outputs[key][:, -1]
            return {**outputs, **states}

        return chained

    def chunking(self):
        if not self.manifest.streams:  # whole-sequence only: there is nothing to chunk or step
            why = f"a whole-sequence export ({self.manifest.whole_sequence})"
            for signature in ("stream", "step"):
                self.add(CheckResult.inapplicable("chunked", signature, why))
            return
        tf = self.tf
        predict_name = SignatureName.PREDICT.value
        feed = _section(self.golden, f"{predict_name}/in/")
        inputs = feed["inputs"]
        batch, steps = inputs.shape[:2]
        signature = self.signature(SignatureName.STREAM.value)
        forward = lambda f: signature(**f)  # noqa: E731
        backward = self.gradient_caller(SignatureName.STREAM.value)
        static_names = [i.name for i in self.manifest.static_inputs]
        contexts = {i.name: feed[i.name] for i in self.manifest.context_inputs}
        initial_state = self.signature(SignatureName.INITIAL_STATE.value)
        initial = dict(initial_state(batch_size=tf.constant(batch, tf.int32),
                                     **{n: tf.constant(feed[n]) for n in [*static_names, *contexts]}))
        weights = _section(self.golden, f"{predict_name}/w/")
        want = _section(self.golden, f"{predict_name}/out/")
        for chunks in sorted({1, 2, steps}):
            bounds = np.linspace(0, steps, chunks + 1).astype(int)
            label = f"stream x{chunks}"
            outputs = self.run_with_gradients(
                "chunked ", label, self.chained_stream(bounds, forward), feed, weights, predict_name,
                grad_call=self.chained_stream(bounds, backward),
            )
            self.compare_many("chunked", label, outputs, want, self.tol)
        self._step_loop(inputs, initial, [s.name for s in self.manifest.states], {n: feed[n] for n in static_names},
                        {i.name: feed[i.name] for i in self.manifest.sequence_inputs}, contexts)

    def _step_loop(self, inputs, initial, state_names, statics, sequences, contexts):
        """`step` T times from `initial` (the contexts went to `initial_state`) against `serving_default`."""
        tf = self.tf
        step = self.signature(SignatureName.STEP.value)
        predict = self.signature(SignatureName.PREDICT.value)
        statics = {k: tf.constant(v) for k, v in statics.items()}
        feed = {"inputs": tf.constant(inputs), **{k: tf.constant(v) for k, v in sequences.items()}, **statics,
                **{k: tf.constant(v) for k, v in contexts.items()}}
        if self.manifest.masked:
            feed["lengths"] = tf.fill([inputs.shape[0]], inputs.shape[1])
        want = {k: v.numpy() for k, v in predict(**feed).items()}
        output_keys = self.manifest.output_keys()
        states, ys = dict(initial), {key: [] for key, _, _ in output_keys}
        for t in range(inputs.shape[1]):
            slices = {k: tf.constant(v[:, t]) for k, v in sequences.items()}
            result = step(x=tf.constant(inputs[:, t]), **slices, **statics, **states)
            for key, step_key, _ in output_keys:
                ys[key].append(result[step_key])
            states = {n: result[n] for n in state_names}
        got = {key: (ys[key][-1] if last_step else tf.stack(ys[key], axis=1)).numpy()
               for key, _, last_step in output_keys}
        got.update({k: v.numpy() for k, v in states.items()})
        self.compare_many("chunked", f"step x{inputs.shape[1]}", got, want, self.tol)

    def higher_order(self):
        """Second derivatives after reload, through the signatures the rows name (`serving_default` as a
        client calls it, fused kernels included, and `stream` chained over two chunks), against the
        source's: a Hessian-vector product and d/dx, d/dW of the input-gradient penalty."""
        from exporter.gradients import second_order

        if "higher/v" not in self.golden:
            self._hvp_of_older_exports()
            return
        name = SignatureName.PREDICT.value
        if "higher/error" in self.golden:
            # TF has no second derivative of the SOURCE model (an op without one): nothing to hold
            # the export to. Passes when the check was on by default, fails when asked for.
            reason = str(self.golden["higher/error"])
            self.add(CheckResult(check="higher order", signature=name, tensor="*", passed=self.manifest.options.hvp_auto,
                                 message=f"not supported by TF for the source model ({reason})"))
            return
        feed = _section(self.golden, f"{name}/in/")
        weights = _section(self.golden, "higher/w/")
        want = {k[len("higher/"):]: v for k, v in self.golden.items()
                if k.startswith("higher/") and k.split("/")[1] not in ("v", "w", "error")}
        steps = feed["inputs"].shape[1]
        callers = [(name, self.gradient_caller(name))]
        if self.manifest.streams:
            callers.append(("stream x2", self.chained_stream([0, steps // 2, steps],
                                                             self.gradient_caller(SignatureName.STREAM.value))))
        for label, call in callers:
            try:
                got = second_order(call, feed, weights, self.golden["higher/v"], self.variables)
            except LookupError as exc:  # the seed's: a gradient lost on the way to disk
                self.add(failed("higher order", label, "*", explain(exc)))
                continue
            except Exception as exc:  # noqa: BLE001
                # TF's own limit after a reload (a factory's loop reading variables inside it): a
                # failure when asked for (--check hvp), else a row that says so.
                self.add(CheckResult(
                    check="higher order", signature=label, tensor="*", passed=self.manifest.options.hvp_auto,
                    message=f"not supported by TF after reload ({explain(exc)}); a StepModel that reads its "
                    "variables in `bind_step` avoids this"))
                continue
            for key in sorted(want):
                tensor = key
                if key.startswith("penalty d/var/"):
                    tensor = f"penalty d/{self.manifest.trainable_variables[int(key.rsplit('/', 1)[1])]}"
                self.add(compare("higher order", label, tensor, got[key], want[key], self.grad_tol))

    def _hvp_of_older_exports(self):
        """Exports made before second derivatives went through the default signatures: their golden
        holds a Hessian-vector product of the while_loop twin (`hvp/...`), checked as it was then."""
        from exporter.gradients import hessian_vector_product

        if "hvp/v" not in self.golden:
            return
        name = SignatureName.PREDICT.value
        auto = self.manifest.options.hvp_auto
        if "hvp/error" in self.golden:
            self.add(CheckResult(check="higher order", signature=name, tensor="Hv/inputs", passed=auto,
                                 message=f"not supported by TF for this model ({self.golden['hvp/error']})"))
            return
        feed = _section(self.golden, f"{name}/in/")
        weights = _section(self.golden, f"{name}/w/")
        try:
            hvp = hessian_vector_product(self.higher_order_caller(name), feed, weights, self.golden["hvp/v"])
        except Exception as exc:  # noqa: BLE001
            self.add(failed("higher order", name, "Hv/inputs", explain(exc)))
            return
        self.add(compare("higher order", name, "Hv/inputs", hvp, self.golden["hvp/out"], self.grad_tol))

    def fused(self):
        """Each fused signature against its while_loop twin: outputs and first derivatives."""
        from exporter.gradients import outputs_and_gradients

        if not self.manifest.options.fused:
            return
        for name in (SignatureName.PREDICT.value, SignatureName.STREAM.value):
            twin = unfused_name(name)
            if twin not in self.loaded.signatures:
                self.add(failed("fused", name, "*", f"its while_loop twin {twin!r} is missing from the SavedModel"))
                continue
            feed = _section(self.golden, f"{name}/in/")
            weights = _section(self.golden, f"{name}/w/")
            fused, loop = self.signature(name), self.signature(twin)
            got = outputs_and_gradients(lambda f: fused(**f), feed, weights, self.variables)
            want = outputs_and_gradients(lambda f: loop(**f), feed, weights, self.variables)
            self.compare_many("fused", name, got[0], want[0], self.tol)
            self.compare_many("fused gradients", name, got[1], want[1], self.grad_tol, prefix="d/")
            for label, grad, expected in zip(self.manifest.trainable_variables, got[2], want[2]):
                self.add(compare("fused gradients", name, f"d/{label}", grad, expected, self.grad_tol))

    def batch_independence(self):
        """Off-diagonal (batch, batch) blocks of the input Jacobian of `serving_default` and `step`."""
        predict_name, step_name = SignatureName.PREDICT.value, SignatureName.STEP.value
        predict_in = _section(self.golden, f"{predict_name}/in/")
        step_in = _section(self.golden, f"{step_name}/in/")
        rng = np.random.default_rng(1234)
        probes = {predict_name: _probe_batch(predict_in, self.manifest.signature(predict_name).inputs, rng, batch=3,
                                             steps=self.manifest.fixed_steps or 4)}
        if self.manifest.streams:
            probes[step_name] = _probe_batch(step_in, self.manifest.signature(step_name).inputs, rng, batch=3)
        for name, feed in probes.items():
            blocks = offdiagonal_blocks(self.gradient_caller(name), feed)
            self.properties_rows.append(blocks)
            self.add(blocks.to_check(name))

    def properties(self) -> dict:
        if not self.properties_rows:
            return {}
        return {
            "batch_independent": all(b.independent for b in self.properties_rows),
            "batch_offdiag_max": max(b.offdiag_max for b in self.properties_rows),
        }


def _probe_batch(feed: dict, descs, rng, *, batch: int, steps: int | None = None) -> dict:
    """Fresh probe rows shaped like `feed` as its signature takes them (`descs`): B rows, T steps on each
    time axis (a dimension the signature leaves open after the batch), every other dimension as it is;
    ints stay in range, text is drawn from the feed's own strings."""
    probe = {}
    shapes = {d.name: d.shape for d in descs}
    for key, value in feed.items():
        if key == "lengths":
            probe[key] = np.array([steps, max(1, steps - 1), steps][:batch], dtype=value.dtype)
            continue
        open_dims = shapes.get(key, (None, *value.shape[1:]))[1:]
        shape = (batch, *(steps if d is None and steps is not None else n for d, n in zip(open_dims, value.shape[1:])))
        if key == POSITION_STATE:  # a step count: whole numbers the golden reached, not noise
            probe[key] = rng.integers(0, int(value.max()) + 1, size=shape).astype(value.dtype)
        elif value.dtype.kind in "SO":
            probe[key] = rng.choice(value.ravel(), size=shape).astype(value.dtype)
        elif np.issubdtype(value.dtype, np.integer):
            probe[key] = rng.integers(1, max(2, int(value.max()) + 1), size=shape).astype(value.dtype)
        else:
            probe[key] = rng.normal(size=shape).astype(value.dtype)
    return probe


# The checks in the order they run, by the name the progress display and the timings use.
CHECK_ORDER = ("weights", "reload and gradients", "source", "inputs", "chunked", "fused", "higher order",
               "batch independence", "generate")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _report_progress(export_dir: Path, check: str, done: int) -> None:
    """One JSON line on stdout per check started: the exporting process shows it as it happens."""
    event = {"event": "check", "export_dir": str(export_dir), "check": check, "done": done,
             "total": len(CHECK_ORDER)}
    print(json.dumps(event), flush=True)


def run_checks(export_dir: Path, on_check=_report_progress) -> dict:
    """Every check this export's manifest and golden allow, or the generic ones without them.

    Returns:
        `{"checks": [CheckResult...], "timings": {check: seconds}, "properties": {...},
        "peak_rss_mb": float}`; `timings` starts with "load" (TensorFlow's import and the
        SavedModel's load), then one entry per check of `CHECK_ORDER`.
    """
    started = time.monotonic()
    if not manifest_path(export_dir).is_file() or not golden_path(export_dir).is_file():
        on_check(export_dir, "generic checks", 0)
        checks = generic_checks(export_dir)
        return {"checks": checks, "timings": {"generic checks": time.monotonic() - started}, "properties": {},
                "peak_rss_mb": _peak_rss_mb()}
    manifest = read_manifest(export_dir)
    golden = load_golden(golden_path(export_dir))
    on_check(export_dir, "load", 0)
    try:
        checker = _Checker(export_dir, manifest, golden)
    except Exception as exc:  # noqa: BLE001
        return {"checks": [failed("reload", "-", "*", f"tf.saved_model.load failed: {explain(exc)}")],
                "timings": {"load": time.monotonic() - started}, "properties": {}, "peak_rss_mb": _peak_rss_mb()}
    timings = {"load": time.monotonic() - started}
    checks = (checker.weights, checker.reload_and_gradients, checker.ground_truth, checker.every_input,
              checker.chunking, checker.fused, checker.higher_order, checker.batch_independence,
              lambda: check_generate(checker))
    for done, (label, check) in enumerate(zip(CHECK_ORDER, checks)):
        on_check(export_dir, label, done)
        started = time.monotonic()
        try:
            check()
        except Exception as exc:  # noqa: BLE001  a check that crashes is a failed check
            checker.add(failed(label, "-", "*", explain(exc)))
        timings[label] = time.monotonic() - started
    return {"checks": checker.results, "timings": timings, "properties": checker.properties(),
            "peak_rss_mb": _peak_rss_mb()}


def die_with_parent() -> None:
    """Linux: SIGKILL when the process that started this one dies (`PR_SET_PDEATHSIG`), so a killed export
    never leaves a verification behind; exits at once when that process is already gone."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != int(parent):  # it died before the signal was armed
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("export_dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    results = {}
    for export_dir in args.export_dirs:
        result = run_checks(export_dir)
        results[str(export_dir)] = result | {"checks": [r.to_json() for r in result["checks"]]}
    args.out.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
