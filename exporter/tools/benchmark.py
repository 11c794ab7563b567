"""Side-by-side timings: the exported graph against the Keras model it came from.

One process, variants interleaved (order rotated every repeat), warm-up first,
medians of the repeats; ratios against the Keras call (variant `keras`) measured in
the same run. Absolute times on a shared machine are noise; the ratios carry over.
Peak memory is measured in a fresh process per variant (ru_maxrss over an
import-only baseline).

Three floors for every row:
- the arithmetic floor: the model's FLOPs per step (the cells' and the head's matrix
  products; 3x that for a gradient: forward, input and weight products) divided by the
  machine's GEMM rate, a large float32 `tf.matmul` timed in the same run;
- forward rows: `recurrent_products`, the time of each cell's `h @ U` alone, one step at a
  time (T in whole blocks of 8), which no runtime can hoist out of its loop: at B <= 32
  those products run far below the large-GEMM rate. It is a TensorFlow call, so at short
  T, where a call's own cost dominates, it bounds the TensorFlow variants only;
- `numpy_step_loop`: the model's maths in numpy, one step at a time (input
  products hoisted), in a child process with one BLAS thread (threadpoolctl) and
  without `OPENBLAS_CORETYPE` / `OPENBLAS_L2_SIZE`, which pick a slower kernel for
  a current numpy; the child reports which kernel it runs. The child times itself,
  and its calls take their turn in the interleaved order like any variant.

The export-cost section (exporter/tools/export_cost.py) runs after the timings, or alone,
under its own JSON key and bench.md part.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.artifact.errors import SeqExportError
from exporter.artifact.specs import ExportOptions
from exporter.convert.runtimes import LiteRTModel, OrtModel, SequenceBackend, StepLoopBackend
from exporter.convert.targets import convert_export
from exporter.tools import beam_bench, bench_targets, cache_bench, export_cost
from exporter.tools.demo import train_demo_model
from exporter.tools.timing import interleaved_medians
from exporter.verification.run import fresh_process_env

FEATURES = 32
HEAD = 8
TOLERANCE = dict(atol=1e-4, rtol=1e-3)  # float32 over up to 1024 steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to run: models, batch sizes, sequence lengths, repeats."""

    models: tuple[str, ...] = ("lstm", "gru", "gru_reset_before", "srnn")
    batches: tuple[int, ...] = (1, 32)
    steps: tuple[int, ...] = (16, 128, 1024)
    repeats: int = 7
    warmup: int = 2
    memory_batch: int = 32
    memory_steps: int = 1024
    memory_models: tuple[str, ...] = ("lstm", "gru", "gru_reset_before", "srnn")

    @classmethod
    def quick(cls) -> "BenchConfig":
        return cls(models=("lstm", "gru", "srnn"), batches=(1, 4), steps=(16,), repeats=3, warmup=1,
                   memory_batch=4, memory_steps=32, memory_models=("lstm",))


MODELS = {
    "lstm": "LSTM(128)",
    "gru": "GRU(128), reset_after=True",
    "gru_reset_before": "GRU(128), reset_after=False",
    "srnn": "2 x SimpleRNN(64)",
}


def build_model(name: str):
    """One of `MODELS` with a per-step Dense(8) head, on 32 features."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    stack = {
        "lstm": lambda: [layers.LSTM(128, return_sequences=True)],
        "gru": lambda: [layers.GRU(128, return_sequences=True)],
        "gru_reset_before": lambda: [layers.GRU(128, return_sequences=True, reset_after=False)],
        "srnn": lambda: [layers.SimpleRNN(64, return_sequences=True), layers.SimpleRNN(64, return_sequences=True)],
    }[name]()
    return keras.Sequential([keras.Input((None, FEATURES)), *stack, layers.Dense(HEAD)], name=name)


_GATES = {"LSTMCell": 4, "GRUCell": 3, "SimpleRNNCell": 1}


def flops_per_step(model, batch: int) -> int:
    """Multiply-adds x 2 of one step of `model`: every cell's input and recurrent products, and the head."""
    import keras

    total, width = 0, FEATURES
    for layer in model.layers:
        if isinstance(layer, keras.layers.RNN):
            units = int(layer.cell.units)
            total += 2 * batch * (width + units) * _GATES[type(layer.cell).__name__] * units
            width = units
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * batch * width * int(layer.units)
            width = int(layer.units)
    return total


def gemm_rate(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a `size`-square float32 `tf.matmul` (best of `repeats`, after a warm-up)."""
    import tensorflow as tf

    a, b = (tf.random.normal([size, size], seed=i) for i in range(2))
    matmul = tf.function(lambda a, b: tf.matmul(a, b))
    matmul(a, b).numpy()
    best = min(_time(lambda _: matmul(a, b).numpy(), None) for _ in range(repeats))
    return 2 * size**3 / best


def recurrent_products(model, unroll: int = 8) -> Callable:
    """`x -> h` running only what no step loop can hoist: each cell's `h @ U` one step at a time
    (sliced back to `[B, U]`), in two batch halves like the export, layers one after the other.

    Its time per step bounds any runtime that takes the recurrent product per step on this
    machine: the arithmetic floor assumes the large-GEMM rate, which products at B <= 32 do not reach.
    """
    import keras
    import tensorflow as tf

    recurrents = [tf.constant(layer.cell.recurrent_kernel.numpy()) for layer in model.layers
                  if isinstance(layer, keras.layers.RNN)]

    def chain(h, recurrent, steps):
        units = int(recurrent.shape[0])

        def body(n, h):
            for _ in range(unroll):
                h = (h @ recurrent)[:, :units]
            return n + 1, h

        return tf.while_loop(lambda n, _: n < steps // unroll, body, (tf.constant(0), h))[1]

    @tf.function
    def run(x):
        batch, steps = tf.shape(x)[0], tf.shape(x)[1]
        halves = [batch // 2, batch - batch // 2]
        outputs = []
        for size in halves:
            h = tf.zeros([size, 1], x.dtype)
            for recurrent in recurrents:
                # `+ h[:, :1]`: a layer starts after the one below it, as in the model.
                h = chain(tf.zeros([size, int(recurrent.shape[0])], x.dtype) + h[:, :1], recurrent, steps)
            outputs.append(h)
        return tf.concat(outputs, axis=0)

    return lambda x: run(tf.constant(x)).numpy()


def _cell_weights(model) -> dict[str, np.ndarray]:
    """The numpy child's input: every cell's kind and weights, and the head's."""
    import keras

    arrays, index = {}, 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.RNN):
            cell = layer.cell
            kind = type(cell).__name__
            if kind == "GRUCell" and not cell.reset_after:
                kind = "GRUCell_reset_before"
            arrays[f"{index}_{kind}_kernel"] = cell.kernel.numpy()
            arrays[f"{index}_{kind}_recurrent"] = cell.recurrent_kernel.numpy()
            arrays[f"{index}_{kind}_bias"] = cell.bias.numpy()
            index += 1
    head = model.layers[-1]
    arrays["head_kernel"], arrays["head_bias"] = head.kernel.numpy(), head.bias.numpy()
    return arrays


# The numpy step loop, run in a child process: one BLAS thread, OPENBLAS_* hints unset.
# Protocol (one JSON object a line each way): {"weights": npz} -> {"blas": [...]};
# {"x": npy} -> {}; {"run": true} -> {"seconds": s}; {"out": npy} -> {} (writes the outputs).
_NUMPY_CHILD = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

limits = threadpool_limits(1)

def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))

def layer(kind, kernel, recurrent, bias, x):
    batch, steps, _ = x.shape
    units = recurrent.shape[0]
    input_bias = bias[0] if bias.ndim == 2 else bias
    projected = (x.reshape(-1, x.shape[-1]) @ kernel + input_bias).reshape(batch, steps, -1)
    h = np.zeros((batch, units), np.float32)
    c = np.zeros((batch, units), np.float32)
    out = np.empty((batch, steps, units), np.float32)
    for t in range(steps):
        p = projected[:, t]
        if kind == "SimpleRNNCell":
            h = np.tanh(p + h @ recurrent)
        elif kind == "LSTMCell":
            g = p + h @ recurrent
            i, f, o = sigmoid(g[:, :units]), sigmoid(g[:, units:2 * units]), sigmoid(g[:, 3 * units:])
            c = f * c + i * np.tanh(g[:, 2 * units:3 * units])
            h = o * np.tanh(c)
        elif kind == "GRUCell":
            inner = h @ recurrent + bias[1]
            zr = sigmoid(p[:, :2 * units] + inner[:, :2 * units])
            z, r = zr[:, :units], zr[:, units:]
            n = np.tanh(p[:, 2 * units:] + r * inner[:, 2 * units:])
            h = z * h + (1.0 - z) * n
        else:  # GRUCell_reset_before
            zr = sigmoid(p[:, :2 * units] + h @ recurrent[:, :2 * units])
            z, r = zr[:, :units], zr[:, units:]
            n = np.tanh(p[:, 2 * units:] + (r * h) @ recurrent[:, 2 * units:])
            h = z * h + (1.0 - z) * n
        out[:, t] = h
    return out

def model(weights, x):
    index = 0
    while True:
        keys = [k for k in weights if k.startswith(f"{index}_")]
        if not keys:
            break
        kind = keys[0][len(f"{index}_"):].rsplit("_", 1)[0]
        x = layer(kind, *(weights[f"{index}_{kind}_{n}"] for n in ("kernel", "recurrent", "bias")), x)
        index += 1
    return x @ weights["head_kernel"] + weights["head_bias"]

weights = x = None
for line in sys.stdin:
    request, reply = json.loads(line), {}
    if "weights" in request:
        weights = dict(np.load(request["weights"]))
        reply["blas"] = [{k: v for k, v in info.items() if k in ("internal_api", "architecture", "num_threads",
                          "version", "filepath")} for info in threadpool_info()]
    elif "x" in request:
        x = np.load(request["x"])
    elif "run" in request:
        start = time.perf_counter()
        model(weights, x)
        reply["seconds"] = time.perf_counter() - start
    elif "out" in request:
        np.save(request["out"], model(weights, x))
    print(json.dumps(reply), flush=True)
"""

# The machine's OpenBLAS hints: they make a current numpy pick a slower kernel, so the numpy
# child runs without them (only the child: the rest of the run keeps the environment it got).
_BLAS_HINTS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class NumpyStepLoop:
    """The numpy step loop in its child process; `timed(x)` is the child's own time of one run."""

    def __init__(self, model, workdir: Path):
        env = {k: v for k, v in os.environ.items() if k not in _BLAS_HINTS}
        self._dir = workdir
        self._proc = subprocess.Popen([sys.executable, "-c", _NUMPY_CHILD], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, env=env)
        weights = workdir / f"{model.name}-numpy-weights.npz"
        np.savez(weights, **_cell_weights(model))
        self.blas = self._ask({"weights": str(weights)})["blas"]
        self._x = None

    def _ask(self, request: dict) -> dict:
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise SeqExportError(f"the numpy step loop's child process exited ({self._proc.wait()})")
        return json.loads(line)

    def _feed(self, x) -> None:
        if self._x is not x:  # held, so a new array cannot be taken for it
            path = self._dir / "numpy-x.npy"
            np.save(path, x)
            self._ask({"x": str(path)})
            self._x = x

    def timed(self, x) -> float:
        self._feed(x)
        return self._ask({"run": True})["seconds"]

    def __call__(self, x):
        self._feed(x)
        path = self._dir / "numpy-out.npy"
        self._ask({"out": str(path)})
        return np.load(path)

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=60)


def _call(fn, x):
    """Runs one variant on `x`; a variant in a child process reports its own time (a float)."""
    if hasattr(fn, "timed"):
        return float(fn.timed(x))
    fn(x)
    return None


def _time(fn, x) -> float:
    start = time.perf_counter()
    reported = _call(fn, x)
    return reported if reported is not None else time.perf_counter() - start


def _runtime_step_loops(plain_dir: Path, workdir: Path) -> dict[str, Callable]:
    """LiteRT and ONNX Runtime step models behind their driver loops, and ONNX Runtime's
    whole-sequence `stream` (a `Loop`, one call per sequence) (optional runtimes).

    ONNX Runtime runs without spin-waiting (`OrtModel(spinning=False)`): its spinning
    threads slow the variant timed after it."""
    backends = {}
    for target in ("tflite", "onnx"):
        out = workdir / f"{plain_dir.name}-{target}"
        if not convert_export(plain_dir, target, out).passed:
            continue  # the JSON still lists every variant that ran; a failed conversion is not timed
        if target == "tflite":
            backends["litert_step_loop"] = StepLoopBackend(LiteRTModel.load(out / "step.tflite"))
        else:
            backends["ort_step_loop"] = StepLoopBackend(OrtModel.load(out / "step.onnx", spinning=False))
            backends["ort_stream"] = SequenceBackend(OrtModel.load(out / "stream.onnx", spinning=False))
    return {name: functools.partial(_stream_from_zeros, backend) for name, backend in backends.items()}


def _stream_from_zeros(backend, x):
    return backend.stream(x, backend.initial_state(x.shape[0]))[0]


def _forward_variants(model, exported, exported_xla, steps_loop: bool) -> dict[str, Callable]:
    import tensorflow as tf

    keras_call = tf.function(lambda x: model(x, training=False))
    predict = exported.signatures["serving_default"]
    stream = exported.signatures["stream"]
    predict_xla = exported_xla.signatures["serving_default"]
    step = exported.signatures["step"]
    initial = exported.signatures["initial_state"]

    def step_loop(x):
        states = initial(batch_size=tf.constant(x.shape[0]))
        ys = []
        for t in range(x.shape[1]):
            result = step(x=x[:, t], **states)
            ys.append(result.pop("y").numpy())
            states = result
        return np.stack(ys, axis=1)

    variants = {
        "keras": lambda x: keras_call(x).numpy(),
        "exported": lambda x: predict(inputs=x)["outputs"].numpy(),
        "exported_stream": lambda x: stream(inputs=x, **initial(batch_size=tf.constant(x.shape[0])))["outputs"].numpy(),
        "exported_xla": lambda x: predict_xla(inputs=x)["outputs"].numpy(),
    }
    if steps_loop:
        variants["tf_step_loop"] = step_loop
    return variants


def _gradient_variants(model, exported) -> dict[str, Callable]:
    import tensorflow as tf

    stream = exported.signatures["stream"]
    initial = exported.signatures["initial_state"]
    exported_vars = list(exported.trainable_variables)

    # Both wrapped in tf.function, as a training step would be.
    @tf.function
    def keras_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(model(x, training=False))
        return tape.gradient(total, [x, *model.trainable_variables])

    @tf.function
    def exported_grad(x):
        states = initial(batch_size=tf.shape(x)[0])
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(stream(inputs=x, **states)["outputs"])
        return tape.gradient(total, [x, *exported_vars])

    return {"keras_grad": lambda x: keras_grad(tf.constant(x))[0].numpy(),
            "exported_grad": lambda x: exported_grad(tf.constant(x))[0].numpy()}


def _export_pair(model, workdir: Path):
    """The model exported twice (plain and `--jit`) and reloaded from disk, as a server would."""
    import tensorflow as tf

    from exporter.keras_model import step_model_from_keras
    from exporter.pipeline import write_export

    loaded = []
    for jit in (False, True):
        directory = workdir / f"{model.name}-{'xla' if jit else 'plain'}"
        write_export(step_model_from_keras(model), directory, name=model.name, source={"kind": "bench"},
                     options=ExportOptions(jit=jit, check_hvp=False))
        loaded.append(tf.saved_model.load(str(directory)))
    return loaded[0], loaded[1], workdir / f"{model.name}-plain"


def _max_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    excess = np.abs(got - want) - (TOLERANCE["atol"] + TOLERANCE["rtol"] * np.abs(want))
    return float(np.max(excess))


def run(config: BenchConfig, workdir: Path, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Runs every timing of `config`; returns the JSON-ready results."""
    rows = []
    memory = []
    progress("timing a large float32 matmul (the GEMM rate of the floor)")
    rates = [gemm_rate()]
    blas = None
    for model_name in config.models:
        model = build_model(model_name)
        progress(f"{model_name}: exporting")
        exported, exported_xla, plain_dir = _export_pair(model, workdir)
        progress(f"{model_name}: converting the step model for LiteRT and ONNX Runtime")
        runtime_loops = _runtime_step_loops(plain_dir, workdir)
        model_file = workdir / f"{model_name}.keras"
        model.save(model_file)
        numpy_loop = NumpyStepLoop(model, workdir)
        blas = numpy_loop.blas
        bound = recurrent_products(model)
        try:
            for batch in config.batches:
                for steps in config.steps:
                    progress(f"{model_name} B={batch} T={steps}")
                    x = np.random.default_rng(batch * 10_000 + steps).normal(size=(batch, steps, FEATURES))
                    x = x.astype(np.float32)
                    forward = _forward_variants(model, exported, exported_xla, steps_loop=steps <= 1024)
                    forward.update(runtime_loops)
                    forward["numpy_step_loop"] = numpy_loop
                    floor = flops_per_step(model, batch) / statistics.median(rates)
                    rows += _rows(model_name, batch, steps, "forward", forward, x, config, floor,
                                  bound=bound)
                    rows += _rows(model_name, batch, steps, "gradient", _gradient_variants(model, exported), x,
                                  config, 3 * floor)
        finally:
            numpy_loop.close()
        rates.append(gemm_rate())
        for variant in ("keras", "exported", "keras_grad", "exported_grad") if model_name in config.memory_models else ():
            progress(f"{model_name}: peak memory of {variant}")
            memory.append(_peak_memory(variant, model_file, plain_dir, config))
    results = {"config": dataclasses.asdict(config), "tolerance": TOLERANCE, "timings": rows, "memory": memory,
               "machine": {"gemm_gflops": [r / 1e9 for r in rates], "numpy_blas": blas,
                           "blas_hints_unset_for_numpy": [k for k in _BLAS_HINTS if k in os.environ]},
               "versions": _versions()}
    results["targets"] = bench_targets.as_json(bench_targets.check(results))
    return results


_BOUND = "recurrent_products"


def _rows(model_name, batch, steps, kind, variants, x, config, floor_seconds_per_step: float,
          bound: Callable | None = None) -> list[dict]:
    """One row per variant. `bound` (`recurrent_products`) is timed in the same interleaved
    order and reported beside every row, not as a variant: it does not compute the model."""
    reference_name = "keras" if kind == "forward" else "keras_grad"
    reference = variants[reference_name](x)
    timed = {name: functools.partial(_call, fn, x) for name, fn in variants.items()}
    if bound is not None:
        timed[_BOUND] = functools.partial(_call, bound, x)
    seconds = interleaved_medians(timed, repeats=config.repeats, warmup=config.warmup)
    bound_seconds = seconds.pop(_BOUND, None)
    rows = []
    for name, value in seconds.items():
        error = _max_error(variants[name](x), reference)
        row = {
            "model": model_name, "batch": batch, "steps": steps, "kind": kind, "variant": name,
            "us_per_step": value / steps * 1e6,
            "throughput_steps_per_s": batch * steps / value,
            "ratio_vs_keras": value / seconds[reference_name],
            "floor_us_per_step": floor_seconds_per_step * 1e6,
            "ratio_vs_floor": value / steps / floor_seconds_per_step,
            "matches_keras": error <= 0.0,
            "excess_over_tolerance": error,
        }
        if bound_seconds is not None:
            row["recurrent_products_us_per_step"] = bound_seconds / steps * 1e6
            row["ratio_vs_recurrent_products"] = value / bound_seconds
        rows.append(row)
    return rows


_MEMORY_CHILD = """
import sys, numpy as np, tensorflow as tf, keras
import exporter.layers
variant, model_file, export_dir, batch, steps = sys.argv[1:6]

def status(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key + ":"))

x = tf.constant(np.random.default_rng(0).normal(size=(int(batch), int(steps), {features})).astype(np.float32))
model = keras.saving.load_model(model_file) if variant.startswith("keras") else None
loaded = tf.saved_model.load(export_dir) if variant.startswith("exported") else None
# Peak RSS from here on: reset the high-water mark to the current RSS (Linux clear_refs 5).
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS")
if variant in ("keras", "exported"):
    model(x) if model is not None else loaded.signatures["serving_default"](inputs=x)
else:
    with tf.GradientTape() as tape:
        tape.watch(x)
        if variant == "keras_grad":
            total, variables = tf.reduce_sum(model(x)), model.trainable_variables
        else:
            s = loaded.signatures["initial_state"](batch_size=tf.constant(int(batch)))
            total = tf.reduce_sum(loaded.signatures["stream"](inputs=x, **s)["outputs"])
            variables = list(loaded.trainable_variables)
    tape.gradient(total, [x, *variables])
print(status("VmHWM") - before)
"""


def _peak_memory(variant: str, model_file: Path, export_dir: Path, config: BenchConfig) -> dict:
    """Peak RSS growth (MB) of one variant's first call, in a fresh process that has already
    imported and loaded everything (Linux: the high-water mark is reset after loading)."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD.format(features=FEATURES), variant, str(model_file), str(export_dir),
         str(config.memory_batch), str(config.memory_steps)],
        capture_output=True, text=True, env=fresh_process_env(), timeout=600,
    )
    if proc.returncode != 0:
        raise SeqExportError(f"memory run of {variant} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return {"variant": variant, "model": model_file.stem, "batch": config.memory_batch,
            "steps": config.memory_steps, "peak_mb_over_baseline": int(proc.stdout.split()[-1]) / 1024}


def _versions() -> dict:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def summary(rows: list[dict]) -> list[str]:
    """One line per (model, B, T): the default export against Keras (`serving_default`, `stream`,
    the gradient through `stream`) and the fastest forward variant against the arithmetic floor."""
    lines = ["| model | B | T | serving_default / keras | stream / keras | gradient / keras | "
             "fastest forward | its ratio vs floor | vs recurrent products alone |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["model"], r["batch"], r["steps"]) for r in rows):
        cell = {(r["kind"], r["variant"]): r for r in rows if (r["model"], r["batch"], r["steps"]) == key}

        def ratio(kind, variant, cell=cell):
            return f"{cell[kind, variant]['ratio_vs_keras']:.2f}" if (kind, variant) in cell else "-"

        fastest = min((r for (kind, _), r in cell.items() if kind == "forward"), key=lambda r: r["us_per_step"])
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {ratio('forward', 'exported')} | "
                     f"{ratio('forward', 'exported_stream')} | {ratio('gradient', 'exported_grad')} | "
                     f"{fastest['variant']} | {fastest['ratio_vs_floor']:.2f} | "
                     f"{fastest.get('ratio_vs_recurrent_products', float('nan')):.2f} |")
    return lines


def markdown(results: dict) -> str:
    """A summary per config, the targets (`bench_targets`), a table of µs/step (ratios vs keras and
    vs the arithmetic floor) per variant and config, peak memory, the machine's floor figures, then
    every section's part."""
    lines = [*summary(results["timings"]), "", *bench_targets.markdown(results["targets"]), ""]
    lines += ["| model | kind | B | T | variant | µs/step | steps/s | ratio vs keras | floor µs/step | "
             "ratio vs floor | matches keras |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["timings"]:
        lines.append(
            f"| {row['model']} | {row['kind']} | {row['batch']} | {row['steps']} | {row['variant']} | "
            f"{row['us_per_step']:.1f} | {row['throughput_steps_per_s']:.0f} | {row['ratio_vs_keras']:.2f} | "
            f"{row['floor_us_per_step']:.1f} | {row['ratio_vs_floor']:.2f} | "
            f"{'yes' if row['matches_keras'] else 'NO'} |"
        )
    lines += ["", "| model | variant | B | T | peak MB over baseline |", "|---|---|---|---|---|"]
    for row in results["memory"]:
        lines.append(f"| {row['model']} | {row['variant']} | {row['batch']} | {row['steps']} | "
                     f"{row['peak_mb_over_baseline']:.0f} |")
    machine = results["machine"]
    kernels = ", ".join(f"{b.get('internal_api')} {b.get('version')} {b.get('architecture')} "
                        f"({b.get('num_threads')} thread)" for b in machine["numpy_blas"] or [])
    lines += ["", f"Models: {'; '.join(f'{k} = {v}' for k, v in MODELS.items())}, each + Dense({HEAD}), "
              f"{FEATURES} features.",
              f"Floor: FLOPs per step (3x for a gradient) / the GEMM rate of a 2048-square float32 matmul, "
              f"{', '.join(f'{g:.1f}' for g in machine['gemm_gflops'])} GFLOP/s in this run, before the first "
              f"model and after each (a row uses the median of those timed before it).",
              f"numpy_step_loop: one BLAS thread, kernel {kernels or 'unknown'}; "
              f"unset for it: {', '.join(machine['blas_hints_unset_for_numpy']) or 'none was set'}."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """µs/step against T per variant, one panel per (model, B), forward pass; the arithmetic floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["timings"] if r["kind"] == "forward"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    figure, axes = plt.subplots(len(models), len(batches), figsize=(4.5 * len(batches), 3.4 * len(models)),
                                squeeze=False)
    for (m, model_name), (b, batch) in ((m, b) for m in enumerate(models) for b in enumerate(batches)):
        axis = axes[m][b]
        panel = [r for r in rows if r["model"] == model_name and r["batch"] == batch]
        for variant in sorted({r["variant"] for r in panel}):
            points = sorted((r["steps"], r["us_per_step"]) for r in panel if r["variant"] == variant)
            axis.plot(*zip(*points), marker="o", label=variant)
        floor = sorted({(r["steps"], r["floor_us_per_step"]) for r in panel if r["variant"] == "keras"})
        axis.plot(*zip(*floor), "k--", label="arithmetic floor")
        axis.set(title=f"{model_name}, B={batch}", xlabel="T (steps)", ylabel="µs/step", xscale="log", yscale="log")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(results: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md"}
    paths["json"].write_text(json.dumps(results, indent=2))
    text = markdown(results) if results.get("timings") else ""
    if results.get("export_cost"):
        text += ("\n" if text else "") + export_cost.markdown(results["export_cost"])
        paths["export_cost_plot"] = out_dir / "bench-export-cost.png"
        export_cost.plot(results["export_cost"], paths["export_cost_plot"])
    paths["markdown"].write_text(text)
    if results.get("timings"):
        paths["plot"] = out_dir / "bench.png"
        plot(results, paths["plot"])
    return paths


def run_and_write(config: BenchConfig | None, out_dir: Path, progress=lambda _: None, *,
                  export_cost_config=None, cache_config=None, beam_config=None) -> dict[str, Path]:
    """Runs the timing section (`config`, None: skipped), the export-cost section
    (`export_cost_config`, an `exporter.tools.export_cost.ExportCostConfig`; None: skipped), the
    key/value cache section (`cache_config`, an `exporter.tools.cache_bench.CacheBenchConfig`) and the
    Beam section (`beam_config`, an `exporter.tools.beam_bench.BeamBenchConfig`; None: skipped)."""
    with tempfile.TemporaryDirectory(prefix="seqexport-bench-") as tmp:
        results = run(config, Path(tmp), progress) if config is not None else {"versions": _versions()}
        if export_cost_config is not None:
            results["export_cost_config"] = dataclasses.asdict(export_cost_config)
            results["export_cost"] = export_cost.run(export_cost_config, Path(tmp), progress)
        if cache_config is not None:
            results["kv_cache"] = cache_bench.run(cache_config, Path(tmp), progress)
        if beam_config is not None:
            from exporter.pipeline import export

            progress("beam: the demo export")
            export(str(train_demo_model(Path(tmp) / "beam" / "demo.keras", seconds=2.0)), name="demo",
                   base=Path(tmp) / "beam" / "models")
            results["beam_config"] = dataclasses.asdict(beam_config)
            results["beam"] = beam_bench.run(beam_config, Path(tmp) / "beam" / "models", progress=progress)
    return write(results, out_dir)
