"""`seqexport check triton REPO`: load a model repository in the real `tritonserver` and stream the goldens.

For every model of the repository (a folder with a `config.pbtxt`):

- `backend: "python"` (`seqexport convert --to triton --backend python`): the server
  loads it; the golden `serving_default` inputs of its export are streamed through it
  in 1, 2 and T chunks per sequence, every golden row its own sequence (correlation
  id), the sequences interleaved request by request, over gRPC and over HTTP; every
  output (by name, for an export with several) and the states after the last chunk
  are compared with `golden.npz` (same rows as `verify`, at the export's own tolerance,
  `manifest.options.tolerance`; each row carries its max abs error). An export with `generate`:
  each greedy case of its goldens (`generate/case/<i>/...`) is sent as `generate` requests too
  (the prompt and `max_new_tokens`, one sequence per row), the ids compared with the source
  model's exactly.
- a whole-sequence export's model (no sequence batcher: `backend: "python"` with a
  `whole_sequence_model`, or `onnxruntime` without `sequence_batching`): the Python one is
  sent the golden `serving_default` inputs over gRPC and HTTP, all rows in one request and
  each row as its own request, every output compared with `golden.npz` at the export's
  tolerance; the onnxruntime one gets the rows below plus an offline row: `model.onnx` in
  ONNX Runtime on the same golden inputs, fed as Triton would (by config input name).
- `onnxruntime` (the default `--to triton`): the wheel's server has no ONNX Runtime
  backend, so it can check the config only as far as Triton's core goes before it
  needs the backend (text format, names, batch size, sequence-batching controls: a
  model that passes gets as far as "unable to find backend library"). The state
  entries (`sequence_batching.state`: dims, data types, initial state) and the
  numbers are checked offline, against `model.onnx` with ONNX Runtime, and only the
  official Triton container runs the model itself.

The server is started on 127.0.0.1 ports picked here and stopped by its pid before
the function returns, whatever happened.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np

from exporter.artifact import golden_io
from exporter.artifact.compare import compare, failed
from exporter.artifact.errors import BadInput
from exporter.artifact.manifest import read_manifest
from exporter.artifact.paths import golden_path
from exporter.artifact.specs import CheckResult, CheckRows, Manifest, SignatureName, Tolerance
from exporter.convert import triton
from exporter.convert.parity import last_valid
from exporter.convert.runtimes import OrtModel
from exporter.convert.triton_server import SequenceClient, ServerFailed, TritonServer, find_server

CHECK = "triton"
PROTOCOLS = ("grpc", "http")
_POLL_FAILED = re.compile(r"Poll failed for model directory '([^']+)': (.*?)\"?$")
_NO_BACKEND = "unable to find backend library"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TritonCheckReport(CheckRows):
    """What the real server did with a repository.

    Attributes:
        repo: the model repository.
        server_version: the `nvidia-pytriton` wheel's version (it bundles tritonserver).
        checks: one row per compared tensor, plus load and refusal rows.
        notes: what was checked where (server vs offline).
        start_seconds: from starting `tritonserver` to live with every model loaded.
        seconds: the whole check.
        models: `{name: backend}`.
    """

    repo: str
    server_version: str
    checks: tuple[CheckResult, ...]
    notes: tuple[str, ...] = ()
    start_seconds: float | None = None
    seconds: float = 0.0
    models: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        if self.passed:
            return f"triton: all {len(self.checks)} checks passed on the real server"
        return f"triton: {self.failure_summary('checks')}"

    def to_json(self) -> dict:
        return {
            "repo": self.repo,
            "passed": self.passed,
            "server_version": self.server_version,
            "models": dict(self.models),
            "checks": [c.to_json() for c in self.checks],
            "notes": list(self.notes),
            "start_seconds": None if self.start_seconds is None else round(self.start_seconds, 3),
            "seconds": round(self.seconds, 3),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Model:
    name: str
    folder: Path
    config: object | None
    error: str = ""

    @property
    def backend(self) -> str:
        if self.config is None:
            return "?"
        return self.config.backend or ("onnxruntime" if self.config.platform.startswith("onnxruntime") else
                                       self.config.platform)


def _models(repo: Path) -> list[_Model]:
    models = []
    for config_path in sorted(repo.glob(f"*/{triton.CONFIG_FILE}")):
        try:
            config = triton.read_config(config_path)
        except Exception as exc:  # noqa: BLE001  text_format.ParseError and friends: the finding
            models.append(_Model(name=config_path.parent.name, folder=config_path.parent, config=None,
                                 error=f"{config_path} does not parse as a ModelConfig: {exc}"))
            continue
        models.append(_Model(name=config_path.parent.name, folder=config_path.parent, config=config))
    if not models:
        raise BadInput(f"{str(repo)!r} is not a Triton model repository: no NAME/{triton.CONFIG_FILE} in it. "
                       "Write one with `seqexport convert EXPORT --to triton --out REPO`.")
    return models


def find_export(model_folder: Path, export: Path | None = None) -> Path:
    """The export whose goldens a repository model is checked against.

    `export` when given; else the `export_dir` its `parity.json` records (written by
    `convert`); else the nearest folder above it that is an export (`export --targets`
    writes the repository inside the version folder).
    """
    if export is not None:
        if not golden_path(export).is_file():
            raise BadInput(f"--export {str(export)!r} is not a seqexport export (no {golden_path(export)}).")
        return Path(export)
    parity = model_folder / "parity.json"
    if parity.is_file():
        try:
            recorded = Path(json.loads(parity.read_text())["export_dir"])
        except (ValueError, KeyError):
            recorded = None
        # Relative in what older versions wrote: to the folder `convert` ran in, most likely this one.
        candidates = [] if recorded is None else [recorded] if recorded.is_absolute() else [
            Path.cwd() / recorded, model_folder / recorded]
        for candidate in candidates:
            if golden_path(candidate).is_file():
                return candidate
    for folder in model_folder.resolve().parents:
        if golden_path(folder).is_file():
            return folder
    raise BadInput(f"Cannot tell which export {str(model_folder)!r} came from (no parity.json naming it, and no "
                   "export above it); pass --export BASE/NAME/VERSION.")


def _load_export(folder: Path) -> tuple[Manifest, dict]:
    """The export's manifest and its golden `serving_default` and greedy `generate/case/` arrays."""
    golden = golden_io.load(golden_path(folder))
    return read_manifest(folder), {k: v for k, v in golden.items()
                                   if k.startswith((f"{SignatureName.PREDICT.value}/", "generate/case/"))}


def _chunks(length: int, count: int) -> list[tuple[int, int]]:
    """`count` near-equal pieces of `[0, length)`, empty ones dropped."""
    bounds = np.linspace(0, length, count + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def sequence_slots(config) -> int:
    """How many sequences Triton runs at once for `config` (the `direct` strategy's batch slots).

    A sequence beyond that waits in Triton's backlog until one ends or idles out, so one
    client thread must never interleave more sequences than this.
    """
    instances = sum(g.count or 1 for g in config.instance_group) or 1
    return max(1, config.max_batch_size) * instances


def stream_sequences(client, model: str, inputs: np.ndarray, lengths, *, chunks: int, first_id: int,
                     slots: int | None = None, outputs: tuple[str, ...] = (triton.CHUNK_OUTPUT,),
                     statics: dict[str, np.ndarray] | None = None, contexts: dict[str, np.ndarray] | None = None,
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Streams every row of `inputs` `[B, T, F]` as its own sequence, in `chunks` pieces each.

    Requests of up to `slots` sequences alternate (chunk k of every row, then chunk k + 1),
    so a state kept under the wrong id shows. Returns each of `outputs` (the response's
    per-step tensors, `[B, T, ...]`, zeros past a row's length) by name, and every other
    tensor of the response (the states) after each row's last chunk, stacked `[B, ...]`.
    `statics` (`{name: [B, ...]}`, an export's static inputs): row b's values go with every request
    of sequence b; `contexts` (an encoder-decoder's context inputs, `{name: [B, S, ...]}`) row b's with its
    START request only.
    """
    statics, contexts = statics or {}, contexts or {}
    batch, steps = inputs.shape[:2]
    slots = slots or batch
    plans = [_chunks(steps if lengths is None else int(lengths[b]), chunks) for b in range(batch)]
    pieces: list[dict[str, list[np.ndarray]]] = [{n: [] for n in outputs} for _ in range(batch)]
    finals: list[dict[str, np.ndarray] | None] = [None] * batch
    order = [(group, k, b) for group in range(0, batch, slots)
             for k in range(max(len(p) for p in plans)) for b in range(group, min(batch, group + slots))]
    for _, k, b in order:
        if k >= len(plans[b]):
            continue
        start, stop = plans[b][k]
        out = client.infer(model, inputs[b:b + 1, start:stop], sequence_id=first_id + b, start=k == 0,
                           end=k == len(plans[b]) - 1,
                           statics={n: v[b:b + 1] for n, v in (statics | (contexts if k == 0 else {})).items()})
        missing = [n for n in outputs if n not in out]
        if missing:
            raise ValueError(f"the response has no output {', '.join(map(repr, missing))}; it has {sorted(out)}")
        for name in outputs:
            pieces[b][name].append(out.pop(name)[0])
        finals[b] = {name: value[0] for name, value in out.items()}
    streamed = {}
    for name in outputs:
        rows = []
        shape, dtype = next(((p[name][0].shape[1:], p[name][0].dtype) for p in pieces if p[name]), ((), np.float32))
        for b in range(batch):
            padded = np.zeros((steps, *shape), dtype)
            if pieces[b][name]:
                got = np.concatenate(pieces[b][name], axis=0)
                padded[: len(got)] = got
            rows.append(padded)
        streamed[name] = np.stack(rows)
    names = sorted({n for f in finals if f for n in f})
    states = {n: np.stack([f[n] if f else np.zeros_like(next(x for x in finals if x)[n]) for f in finals])
              for n in names}
    return streamed, states


def served_outputs(manifest: Manifest) -> tuple[str, ...]:
    """The per-step output tensors of the Python-backend model for `manifest`'s export, by name
    (`triton.chunk_outputs`): `outputs`, or each of several outputs."""
    if not manifest.outputs:
        return (triton.CHUNK_OUTPUT,)
    return tuple(sorted(o.name for o in manifest.outputs))


def golden_rows(label: str, outputs: dict[str, np.ndarray], states: dict, manifest: Manifest, golden: dict,
                tolerance: Tolerance) -> list[CheckResult]:
    """Every streamed output (by name) and final state vs the golden `serving_default` ones
    (`parity.driver_checks` rules: a last-step output at each row's last valid step, a masked
    export's outputs at the valid steps only)."""
    lengths = golden.get("serving_default/in/lengths")
    rows = []
    for key, _, last_step in manifest.output_keys():
        want = golden[f"serving_default/out/{key}"]
        if key not in outputs:
            rows.append(failed(CHECK, label, key, f"the server returned no output {key!r} ({sorted(outputs)})"))
        elif last_step:
            rows.append(compare(CHECK, label, key, last_valid(outputs[key], lengths), want, tolerance))
        elif lengths is not None:
            valid = np.arange(outputs[key].shape[1])[None, :] < lengths[:, None]
            rows.append(compare(CHECK, label, f"{key}[t<lengths]", outputs[key][valid], want[valid], tolerance))
        else:
            rows.append(compare(CHECK, label, key, outputs[key], want, tolerance))
    for state in manifest.states:
        if state.name not in states:
            rows.append(failed(CHECK, label, state.name, f"the server returned no state {state.name!r}"))
        else:
            # A number per sequence (a position) comes back [B, 1]: Triton's dims cannot be empty.
            served = np.reshape(states[state.name], (-1, *state.shape)) if not state.shape else states[state.name]
            rows.append(compare(CHECK, label, state.name, served, golden[f"serving_default/out/{state.name}"],
                                tolerance))
    return rows


def _python_rows(server, model: _Model, export: Path | None, tolerance: Tolerance | None) -> list[CheckResult]:
    try:
        manifest, golden = _load_export(find_export(model.folder, export))
    except BadInput as exc:
        return [failed(CHECK, f"{model.name} goldens", "golden.npz", str(exc))]
    tolerance = tolerance or manifest.options.tolerance
    inputs = golden["serving_default/in/inputs"]
    lengths = golden.get("serving_default/in/lengths")
    statics = {i.name: golden[f"serving_default/in/{i.name}"] for i in manifest.static_inputs}
    contexts = {i.name: golden[f"serving_default/in/{i.name}"] for i in manifest.context_inputs}
    rows: list[CheckResult] = []
    first_id = 1
    for protocol in PROTOCOLS:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        with SequenceClient(protocol, url) as client:
            for chunks in sorted({1, 2, inputs.shape[1]}):
                label = f"{model.name} {protocol} x{chunks}"
                try:
                    outputs, states = stream_sequences(client, model.name, inputs, lengths, chunks=chunks,
                                                       first_id=first_id, slots=sequence_slots(model.config),
                                                       outputs=served_outputs(manifest), statics=statics,
                                                       contexts=contexts)
                except Exception as exc:  # noqa: BLE001  the server's refusal is the finding
                    rows.append(failed(CHECK, label, "*", f"{type(exc).__name__}: {exc}"))
                else:
                    rows.extend(golden_rows(label, outputs, states, manifest, golden, tolerance))
                first_id += inputs.shape[0]
            if manifest.generate is not None:
                rows.extend(generate_rows(client, model.name, manifest, golden, tolerance, first_id=first_id))
                first_id += 1000
    return rows


def generate_rows(client, model: str, manifest: Manifest, golden: dict, tolerance: Tolerance, *,
                  first_id: int) -> list[CheckResult]:
    """Each greedy case of the goldens (`generate/case/<i>/...`) as `generate` requests: every prompt row its own
    sequence, the prompt and `max_new_tokens` in its START request, against the source model's greedy ids (ids
    exactly; features within `tolerance`)."""
    spec = manifest.generate
    cases = sorted({int(k.split("/")[2]) for k in golden if k.startswith("generate/case/")})
    statics = [i.name for i in (*manifest.static_inputs, *manifest.context_inputs)]
    rows = []
    for case in cases:
        prompt, want = golden[f"generate/case/{case}/in/prompt"], golden[f"generate/case/{case}/want"]
        label = f"{model} {client.protocol} generate B={prompt.shape[0]} P={prompt.shape[1]}"
        count = np.array([[want.shape[1]]], np.int32)
        try:
            got = np.concatenate([client.infer_tensors(model, {
                triton.CHUNK_INPUT: prompt[b:b + 1], triton.GENERATE_INPUT: count,
                **{n: golden[f"generate/case/{case}/in/{n}"][b:b + 1] for n in statics}},
                sequence_id=first_id + 100 * case + b, sequence_start=True, sequence_end=True)[spec.output_key]
                for b in range(prompt.shape[0])])
        except Exception as exc:  # noqa: BLE001  the server's refusal is the finding
            rows.append(failed(CHECK, label, spec.output_key, f"{type(exc).__name__}: {exc}"))
            continue
        exact = spec.feedback.value == "ids"
        rows.append(compare(CHECK, label, spec.output_key, got, want,
                            Tolerance(atol=0.0, rtol=0.0) if exact else tolerance))
    return rows


def _whole_feed(config, golden: dict, rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """The golden `serving_default` inputs by config input name, `rows` of them, shaped as the config
    declares them (a `[B]` tensor declared `dims: [1]` with a `reshape` goes as `[B, 1]`)."""
    feed = {}
    for tensor in config.input:
        if f"serving_default/in/{tensor.name}" not in golden:
            raise KeyError(f"config input {tensor.name!r} is no golden serving_default input")
        value = golden[f"serving_default/in/{tensor.name}"][rows]
        feed[tensor.name] = value.reshape(len(value), *tensor.dims) if tensor.HasField("reshape") else value
    return feed


def whole_sequence_rows(label: str, got: dict[str, np.ndarray], config, golden: dict,
                        tolerance: Tolerance, rows: slice = slice(None)) -> list[CheckResult]:
    """Every output of a whole-sequence model's response (by config output name; a reshaped one back
    to the model's shape) vs the golden `serving_default` outputs of `rows`."""
    checks = []
    for tensor in config.output:
        if f"serving_default/out/{tensor.name}" not in golden:
            checks.append(failed(CHECK, label, tensor.name, f"config output {tensor.name!r} is no golden "
                                                            "serving_default output"))
            continue
        want = golden[f"serving_default/out/{tensor.name}"][rows]
        if tensor.name not in got:
            checks.append(failed(CHECK, label, tensor.name, f"the server returned no output {tensor.name!r} "
                                                            f"({sorted(got)})"))
            continue
        value = got[tensor.name]
        if tensor.HasField("reshape") and value.size == want.size:  # `[B, 1]` back to the model's `[B]`
            value = value.reshape(want.shape)
        checks.append(compare(CHECK, label, tensor.name, value, want, tolerance))
    return checks


def is_whole_sequence(config) -> bool:
    """A repository model of a whole-sequence export: no sequence batcher (`convert` writes one for every
    streaming export), or a Python-backend model that runs `serving_default`."""
    if config.backend == triton.PYTHON_BACKEND:
        return bool(triton.python_spec(config).get("whole_sequence_model"))
    return not config.HasField("sequence_batching")


def _python_whole_rows(server, model: _Model, export: Path | None, tolerance: Tolerance | None) -> list[CheckResult]:
    try:
        manifest, golden = _load_export(find_export(model.folder, export))
    except BadInput as exc:
        return [failed(CHECK, f"{model.name} goldens", "golden.npz", str(exc))]
    tolerance = tolerance or manifest.options.tolerance
    batch = len(golden["serving_default/in/inputs"])
    requests = [(f"{batch} rows", slice(None))] + [(f"row {b}", slice(b, b + 1)) for b in range(batch)]
    rows: list[CheckResult] = []
    for protocol in PROTOCOLS:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        with SequenceClient(protocol, url) as client:
            for what, part in requests:
                label = f"{model.name} {protocol} {what}"
                try:
                    got = client.infer_tensors(model.name, _whole_feed(model.config, golden, part))
                except Exception as exc:  # noqa: BLE001  the server's refusal is the finding
                    rows.append(failed(CHECK, label, "*", f"{type(exc).__name__}: {exc}"))
                else:
                    rows.extend(whole_sequence_rows(label, got, model.config, golden, tolerance, part))
    return rows


def _offline_whole_rows(model: _Model, onnx_file: Path, export: Path | None,
                        tolerance: Tolerance | None) -> list[CheckResult]:
    """`model.onnx` in ONNX Runtime on the golden inputs, fed by config input name as Triton feeds it."""
    try:
        manifest, golden = _load_export(find_export(model.folder, export))
    except BadInput as exc:
        return [failed(CHECK, f"{model.name} goldens", "golden.npz", str(exc))]
    try:
        got = OrtModel.load(onnx_file)({t.name: golden[f"serving_default/in/{t.name}"] for t in model.config.input})
    except Exception as exc:  # noqa: BLE001  a model that does not run on the config's inputs is the finding
        return [failed(CHECK, f"{model.name} offline", triton.MODEL_FILE, f"ONNX Runtime: {type(exc).__name__}: {exc}")]
    return whole_sequence_rows(f"{model.name} offline goldens", got, model.config, golden,
                               tolerance or manifest.options.tolerance)


def _onnxruntime_rows(model: _Model, reason: str, export: Path | None = None,
                      tolerance: Tolerance | None = None) -> list[CheckResult]:
    rows = []
    if _NO_BACKEND in reason:
        rows.append(CheckResult(check=CHECK, signature=f"{model.name} server", tensor="config.pbtxt", passed=True,
                                message="Triton's core validation passed; the server has no ONNX Runtime backend "
                                        "to load the model"))
    else:
        rows.append(failed(CHECK, f"{model.name} server", "config.pbtxt", f"the server refused it: {reason}"))
    onnx_files = sorted(model.folder.glob(f"*/{triton.MODEL_FILE}"))
    if not onnx_files:
        return rows + [failed(CHECK, f"{model.name} offline", triton.MODEL_FILE, "no version folder holds one")]
    problems = triton.check_config(model.config, OrtModel.load(onnx_files[-1]))
    if problems:
        rows += [failed(CHECK, f"{model.name} offline", "config vs model.onnx", p) for p in problems]
    else:
        rows.append(CheckResult(check=CHECK, signature=f"{model.name} offline", tensor="config vs model.onnx",
                                passed=True, message="states, dims and data types agree (ONNX Runtime)"))
    if is_whole_sequence(model.config):
        rows += _offline_whole_rows(model, onnx_files[-1], export, tolerance)
    return rows


def _load_failures(server) -> dict[str, str]:
    """`{model: reason}` for models the server did not load (from its index, and its log for poll failures)."""
    reasons = {m["name"]: m.get("reason", "") for m in server.models() if m.get("state") != "READY"}
    for line in server.log_path.read_text(errors="replace").splitlines():
        match = _POLL_FAILED.search(line)
        if match and match.group(1) in reasons and not reasons[match.group(1)]:
            reasons[match.group(1)] = match.group(2)
    return {name: reason or "not loaded (no reason given; see the server log)" for name, reason in reasons.items()}


def check_repository(repo: Path, *, export: Path | None = None, tolerance: Tolerance | None = None,
                     server=None, names: tuple[str, ...] = ()) -> TritonCheckReport:
    """Starts the real `tritonserver` on `repo` (unless `server`, a started `TritonServer`, is given),
    checks every model, and stops the server.

    Args:
        repo: a Triton model repository written by `seqexport convert --to triton`.
        export: the export the goldens come from (default: found from the repository, see `find_export`).
        tolerance: default: the export's own.
        server: a running `triton_server.TritonServer` on `repo` (left running).
        names: check these models only (default: every model of the repository).

    Raises:
        BadInput: not a repository, no export found, or the server is not installed.
    """
    started = time.monotonic()
    repo = Path(repo)
    if not repo.is_dir():
        raise BadInput(f"{str(repo)!r} is not a folder (a Triton model repository).")
    if export is not None:
        find_export(repo, export)  # a wrong --export is a usage error, before any server starts
    files = find_server()
    models = _models(repo)
    if names:
        unknown = sorted(set(names) - {m.name for m in models})
        if unknown:
            raise BadInput(f"{str(repo)!r} has no model {', '.join(unknown)}; it has {', '.join(m.name for m in models)}.")
        models = [m for m in models if m.name in names]
    rows: list[CheckResult] = [failed(CHECK, f"{m.name} config", "config.pbtxt", m.error) for m in models if m.error]
    notes = []
    own = server is None
    server = server or TritonServer(repo, files=files)
    try:
        if own:
            try:
                server.start()
            except ServerFailed as exc:
                rows.append(failed(CHECK, "server", "start", str(exc)))
                return _report(repo, files, rows, notes, None, started, models)
        failures = _load_failures(server)
        for model in models:
            if model.config is None:
                continue
            if model.backend == "python":
                if model.name in failures:
                    rows.append(failed(CHECK, f"{model.name} server", "load", failures[model.name]))
                    continue
                rows.append(CheckResult(check=CHECK, signature=f"{model.name} server", tensor="load", passed=True,
                                        message=f"loaded by tritonserver (nvidia-pytriton {files.version})"))
                whole = is_whole_sequence(model.config)
                rows.extend((_python_whole_rows if whole else _python_rows)(server, model, export, tolerance))
            elif model.backend == "onnxruntime" and is_whole_sequence(model.config):
                rows.extend(_onnxruntime_rows(model, failures.get(model.name, ""), export, tolerance))
                notes.append(
                    f"{model.name}: onnxruntime backend, whole-sequence export (no sequence batcher). The real "
                    "server here checked config.pbtxt as far as Triton's core goes; the config was checked offline "
                    "against model.onnx, and model.onnx run in ONNX Runtime on the golden inputs, fed by config "
                    "input name; only the official Triton container runs it in Triton.")
            elif model.backend == "onnxruntime":
                rows.extend(_onnxruntime_rows(model, failures.get(model.name, "")))
                notes.append(
                    f"{model.name}: onnxruntime backend. The real server here checked config.pbtxt as far as "
                    "Triton's core goes (parsing, names, max_batch_size, sequence-batching controls); the state "
                    "entries (dims, data types, zero initial state) were checked offline against model.onnx, and "
                    "only the official Triton container (it has the ONNX Runtime backend) runs the model with "
                    "implicit state. `--backend python` gives a repository this server runs end to end.")
            else:
                rows.append(failed(CHECK, f"{model.name} server", "backend",
                                   f"backend {model.backend!r} is not one seqexport writes (python, onnxruntime)"))
        return _report(repo, files, rows, notes, server.start_seconds, started, models)
    finally:
        if own:
            server.close()


def _report(repo, files, rows, notes, start_seconds, started, models) -> TritonCheckReport:
    return TritonCheckReport(repo=str(repo), server_version=files.version, checks=tuple(rows), notes=tuple(notes),
                             start_seconds=start_seconds, seconds=time.monotonic() - started,
                             models={m.name: m.backend for m in models})
