"""Check a converted model against the export's `golden.npz`: one `CheckResult` per tensor.

Two kinds of rows, both in the `verify` table format (`exporter.cli.report.checks_table`):
- the model alone, on the golden inputs of the signature it was converted from
  (`step` or `stream`), against that signature's golden outputs;
- a `Backend` driver over the golden `serving_default` inputs in 1, 2 and T chunks,
  state threaded between chunks (from the static inputs' initial state, static inputs fed with
  every chunk, other sequence inputs cut into the same chunks), against the golden predict outputs (every one, by name) and final states.

A step driver cannot reproduce the outputs of padded steps (see
`exporter.convert.runtimes.StepLoopBackend`); for masked exports its rows compare the
valid steps only (`outputs[t<lengths]`), while its final states compare whole.
"""

from __future__ import annotations

import numpy as np

from exporter.artifact.compare import compare, failed
from exporter.artifact.specs import CheckResult, Manifest, Tolerance


def _section(golden: dict, prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix) and "/" not in k[len(prefix):]}


def _fit_batch(arrays: dict[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
    """Rows repeated (or cut) to `batch`: rows are independent sequences, so row i of the
    result must equal golden row i % B."""
    if batch is None:
        return arrays
    return {k: np.asarray(v)[np.arange(batch) % np.shape(v)[0]] if np.ndim(v) else v for k, v in arrays.items()}


def model_checks(
    check: str, signature: str, model, golden: dict, tolerance: Tolerance
) -> list[CheckResult]:
    """The converted model on the golden inputs of `signature` vs its golden outputs."""
    batch = model.static_batch
    feed = _fit_batch(_section(golden, f"{signature}/in/"), batch)
    want = _fit_batch(_section(golden, f"{signature}/out/"), batch)
    try:
        got = model(feed)
    except Exception as exc:  # noqa: BLE001  a runtime error is the finding
        return [failed(check, signature, "*", f"{model.runtime} failed to run: {type(exc).__name__}: {exc}")]
    rows = []
    for key in sorted(want):
        if key not in got:
            rows.append(failed(check, signature, key, f"missing from the {model.runtime} outputs {sorted(got)}"))
        else:
            rows.append(compare(check, signature, key, got[key], want[key], tolerance))
    return rows


def last_valid(outputs: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    if lengths is None:
        return outputs[:, -1]
    index = np.clip(lengths - 1, 0, outputs.shape[1] - 1)
    return outputs[np.arange(outputs.shape[0]), index]


def driver_checks(
    check: str,
    label: str,
    backend,
    manifest: Manifest,
    golden: dict,
    tolerance: Tolerance,
    *,
    batch: int | None = None,
    exact_padding: bool = False,
) -> list[CheckResult]:
    """`backend.stream` over the golden predict inputs in chunks vs the golden predict outputs.

    Args:
        check: the runtime's name (first column of the table).
        label: what drives it, e.g. `step driver`; rows are labelled `<label> x<chunks>`.
        backend: a `serving.session.Backend`.
        batch: a static batch the backend needs (golden rows are repeated to fill it).
        exact_padding: the backend reproduces the outputs of padded steps (a converted
            `stream` model does; a step loop does not), so compare them too.
    """
    feed = _fit_batch(_section(golden, "serving_default/in/"), batch)
    want = _fit_batch(_section(golden, "serving_default/out/"), batch)
    inputs, lengths = feed["inputs"], feed.get("lengths")
    statics = {i.name: feed[i.name] for i in manifest.static_inputs}
    static_kwargs = {"statics": statics} if statics else {}
    context = {i.name: feed[i.name] for i in manifest.context_inputs}  # an encoder's: `initial_state` only
    initial_kwargs = {**static_kwargs, **({"context": context} if context else {})}
    others = {i.name: feed[i.name] for i in manifest.sequence_inputs}  # cut into the same chunks
    rows_batch, steps = inputs.shape[:2]
    state_names = [s.name for s in manifest.states]
    rows: list[CheckResult] = []
    for chunks in sorted({1, 2, steps}):
        signature = f"{label} x{chunks}"
        bounds = np.linspace(0, steps, chunks + 1).astype(int)
        try:
            states = backend.initial_state(rows_batch, **initial_kwargs)
            pieces = []
            for start, stop in zip(bounds[:-1], bounds[1:]):
                chunk_lengths = None if lengths is None else np.clip(lengths - start, 0, stop - start).astype(np.int32)
                kwargs = {**static_kwargs, **({"sequences": {n: v[:, start:stop] for n, v in others.items()}}
                                              if others else {})}
                outputs, states = backend.stream(inputs[:, start:stop], states, chunk_lengths, **kwargs)
                pieces.append(outputs if isinstance(outputs, dict) else {"outputs": np.asarray(outputs)})
        except Exception as exc:  # noqa: BLE001
            rows.append(failed(check, signature, "*", f"driver failed: {type(exc).__name__}: {exc}"))
            continue
        padded = lengths is not None and not exact_padding
        for key, _, last_step in manifest.output_keys():
            if key not in pieces[0]:
                rows.append(failed(check, signature, key, f"driver returned no output {key!r} ({sorted(pieces[0])})"))
                continue
            outputs = np.concatenate([np.asarray(p[key]) for p in pieces], axis=1)
            if last_step:
                got = last_valid(outputs, lengths if padded else None)
                rows.append(compare(check, signature, key, got, want[key], tolerance))
            elif padded:
                valid = np.arange(steps)[None, :] < lengths[:, None]
                rows.append(compare(check, signature, f"{key}[t<lengths]", outputs[valid],
                                    want[key][valid], tolerance))
            else:
                rows.append(compare(check, signature, key, outputs, want[key], tolerance))
        for name in state_names:
            if name not in states:
                rows.append(failed(check, signature, name, f"driver returned no state {name!r}"))
            else:
                rows.append(compare(check, signature, name, states[name], want[name], tolerance))
    return rows


GENERATE_DRIVER = "generate driver"


def generate_driver_checks(check: str, backend, manifest: Manifest, golden: dict,
                           tolerance: Tolerance) -> list[CheckResult]:
    """The export's `generate` loop run by the runtime: `backend` over each greedy case of the goldens (the
    prompt, then one step per new id: the argmax of the last step's scores fed back, or the last step's
    features), against the source model's own greedy loop. Ids must be equal; features within `tolerance`.
    None of it without a `generate` signature."""
    spec = manifest.generate
    if spec is None:
        return []
    ids = spec.feedback.value == "ids"
    key = manifest.output_keys()[0][0]
    cases = sorted({int(k.split("/")[2]) for k in golden if k.startswith("generate/case/")})
    rows: list[CheckResult] = []
    for case in cases:
        feed = _section(golden, f"generate/case/{case}/in/")
        want = golden[f"generate/case/{case}/want"]
        prompt = feed["prompt"]
        signature = f"{GENERATE_DRIVER} B={prompt.shape[0]} P={prompt.shape[1]}"
        statics = {i.name: feed[i.name] for i in manifest.static_inputs}
        context = {i.name: feed[i.name] for i in manifest.context_inputs}
        static_kwargs = {"statics": statics} if statics else {}
        try:
            states = backend.initial_state(prompt.shape[0], **static_kwargs, **({"context": context} if context else {}))
            outputs, states = backend.stream(prompt, states, None, **static_kwargs)
            chosen = []
            for _ in range(want.shape[1]):
                last = np.asarray(outputs[key] if isinstance(outputs, dict) else outputs)[:, -1]
                following = np.argmax(last, axis=-1).astype(np.int32) if ids else last.astype(prompt.dtype)
                chosen.append(following)
                outputs, states = backend.stream(following[:, None], states, None, **static_kwargs)
        except Exception as exc:  # noqa: BLE001
            rows.append(failed(check, signature, "tokens", f"driver failed: {type(exc).__name__}: {exc}"))
            continue
        got = np.stack(chosen, axis=1)
        exact = Tolerance(atol=0.0, rtol=0.0)
        rows.append(compare(check, signature, "tokens" if ids else "predictions", got, want,
                            exact if ids else tolerance))
    return rows
