"""Side-by-side timings: the exported graph against the Keras model it came from.

One process, variants interleaved (order rotated every repeat), warm-up first,
medians of the repeats; ratios against the Keras call (variant `keras`) measured in
the same run. Absolute times on a shared machine are noise; the ratios carry over.
Peak memory is measured in a fresh process per variant (ru_maxrss over an
import-only baseline).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

FEATURES = 32
HEAD = 8
TOLERANCE = dict(atol=1e-4, rtol=1e-3)  # float32 over up to 1024 steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to run: models, batch sizes, sequence lengths, repeats."""

    models: tuple[str, ...] = ("lstm", "srnn")
    batches: tuple[int, ...] = (1, 32)
    steps: tuple[int, ...] = (16, 128, 1024)
    repeats: int = 7
    warmup: int = 2
    memory_batch: int = 32
    memory_steps: int = 1024
    memory_models: tuple[str, ...] = ("lstm", "srnn")

    @classmethod
    def quick(cls) -> "BenchConfig":
        return cls(batches=(1, 4), steps=(16,), repeats=3, warmup=1, memory_batch=4, memory_steps=32,
                   memory_models=("lstm",))


def build_model(name: str):
    """LSTM(128) + per-step Dense 8, or 2 x SimpleRNN(64) + Dense 8, on 32 features."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    stack = (
        [layers.LSTM(128, return_sequences=True)]
        if name == "lstm"
        else [layers.SimpleRNN(64, return_sequences=True), layers.SimpleRNN(64, return_sequences=True)]
    )
    return keras.Sequential([keras.Input((None, FEATURES)), *stack, layers.Dense(HEAD)], name=name)


def _numpy_floor(model) -> Callable[[np.ndarray], np.ndarray]:
    """Only the cells' and the head's matrix multiplies, in numpy: a floor, not a model."""
    import keras

    cells = [l.cell for l in model.layers if isinstance(l, keras.layers.RNN)]
    weights = [(c.kernel.numpy(), c.recurrent_kernel.numpy()) for c in cells]
    head = model.layers[-1].kernel.numpy()

    def run(x):
        batch, steps, _ = x.shape
        hidden = [np.zeros((batch, r.shape[0]), np.float32) for _, r in weights]
        outputs = np.empty((batch, steps, head.shape[1]), np.float32)
        for t in range(steps):
            v = x[:, t]
            for i, (k, r) in enumerate(weights):
                v = hidden[i] = (v @ k + hidden[i] @ r)[:, : r.shape[0]]
            outputs[:, t] = v @ head
        return outputs

    return run


def _time(fn, x) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def _interleaved(variants: dict[str, Callable], x, config: BenchConfig) -> dict[str, float]:
    """Median seconds per call of each variant, timed in rotating order."""
    names = list(variants)
    for _ in range(config.warmup):
        for name in names:
            variants[name](x)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(config.repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            samples[name].append(_time(variants[name], x))
    return {n: statistics.median(v) for n, v in samples.items()}


def _runtime_step_loops(plain_dir: Path, workdir: Path) -> dict[str, Callable]:
    """LiteRT and ONNX Runtime step models behind their driver loops (optional runtimes)."""
    from exporter.convert.targets import convert_export
    from serving.runtimes import StepLoopBackend, load_model

    loops = {}
    for target, file in (("tflite", "step.tflite"), ("onnx", "step.onnx")):
        out = workdir / f"{plain_dir.name}-{target}"
        report = convert_export(plain_dir, target, out)
        if not report.passed:
            continue  # the JSON still lists every variant that ran; a failed conversion is not timed
        backend = StepLoopBackend(load_model(out / file))
        name = "litert_step_loop" if target == "tflite" else "ort_step_loop"
        loops[name] = lambda x, backend=backend: backend.stream(x, backend.initial_state(x.shape[0]))[0]
    return loops


def _forward_variants(model, exported, exported_xla, steps_loop: bool) -> dict[str, Callable]:
    import tensorflow as tf

    keras_call = tf.function(lambda x: model(x, training=False))
    predict = exported.signatures["serving_default"]
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
        "exported_xla": lambda x: predict_xla(inputs=x)["outputs"].numpy(),
        "numpy_floor": _numpy_floor(model),
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

    from exporter.keras_step import step_model_from_keras
    from exporter.pipeline import write_export
    from exporter.specs import ExportOptions

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
    for model_name in config.models:
        model = build_model(model_name)
        progress(f"{model_name}: exporting")
        exported, exported_xla, plain_dir = _export_pair(model, workdir)
        progress(f"{model_name}: converting the step model for LiteRT and ONNX Runtime")
        runtime_loops = _runtime_step_loops(plain_dir, workdir)
        model_file = workdir / f"{model_name}.keras"
        model.save(model_file)
        for batch in config.batches:
            for steps in config.steps:
                progress(f"{model_name} B={batch} T={steps}")
                x = np.random.default_rng(batch * 10_000 + steps).normal(size=(batch, steps, FEATURES))
                x = x.astype(np.float32)
                forward = _forward_variants(model, exported, exported_xla, steps_loop=steps <= 1024)
                forward.update(runtime_loops)
                rows += _rows(model_name, batch, steps, "forward", forward, x, config)
                rows += _rows(model_name, batch, steps, "gradient", _gradient_variants(model, exported), x, config)
        for variant in ("keras", "exported", "keras_grad", "exported_grad") if model_name in config.memory_models else ():
            progress(f"{model_name}: peak memory of {variant}")
            memory.append(_peak_memory(variant, model_file, plain_dir, config))
    return {"config": dataclasses.asdict(config), "tolerance": TOLERANCE, "timings": rows, "memory": memory,
            "versions": _versions()}


def _rows(model_name, batch, steps, kind, variants, x, config) -> list[dict]:
    reference_name = "keras" if kind == "forward" else "keras_grad"
    reference = variants[reference_name](x)
    seconds = _interleaved(variants, x, config)
    rows = []
    for name, value in seconds.items():
        error = _max_error(variants[name](x), reference) if name != "numpy_floor" else None
        rows.append({
            "model": model_name, "batch": batch, "steps": steps, "kind": kind, "variant": name,
            "us_per_step": value / steps * 1e6,
            "throughput_steps_per_s": batch * steps / value,
            "ratio_vs_keras": value / seconds[reference_name],
            "matches_keras": None if error is None else error <= 0.0,
            "excess_over_tolerance": error,
        })
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
    from exporter.errors import SeqExportError
    from exporter.verify import _clean_env

    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD.format(features=FEATURES), variant, str(model_file), str(export_dir),
         str(config.memory_batch), str(config.memory_steps)],
        capture_output=True, text=True, env=_clean_env(), timeout=600,
    )
    if proc.returncode != 0:
        raise SeqExportError(f"memory run of {variant} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return {"variant": variant, "model": model_file.stem, "batch": config.memory_batch,
            "steps": config.memory_steps, "peak_mb_over_baseline": int(proc.stdout.split()[-1]) / 1024}


def _versions() -> dict:
    import platform

    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def markdown(results: dict) -> str:
    """A table of µs/step (ratio vs keras) per variant and config."""
    lines = ["| model | kind | B | T | variant | µs/step | steps/s | ratio vs keras | matches keras |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results["timings"]:
        match = "-" if row["matches_keras"] is None else ("yes" if row["matches_keras"] else "NO")
        lines.append(
            f"| {row['model']} | {row['kind']} | {row['batch']} | {row['steps']} | {row['variant']} | "
            f"{row['us_per_step']:.1f} | {row['throughput_steps_per_s']:.0f} | {row['ratio_vs_keras']:.2f} | {match} |"
        )
    lines += ["", "| model | variant | B | T | peak MB over baseline |", "|---|---|---|---|---|"]
    for row in results["memory"]:
        lines.append(f"| {row['model']} | {row['variant']} | {row['batch']} | {row['steps']} | "
                     f"{row['peak_mb_over_baseline']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """µs/step against T per variant, one panel per (model, B), forward pass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["timings"] if r["kind"] == "forward"]
    panels = sorted({(r["model"], r["batch"]) for r in rows})
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for axis, (model_name, batch) in zip(axes[0], panels):
        for variant in sorted({r["variant"] for r in rows}):
            points = sorted((r["steps"], r["us_per_step"]) for r in rows
                            if r["model"] == model_name and r["batch"] == batch and r["variant"] == variant)
            axis.plot(*zip(*points), marker="o", label=variant)
        axis.set(title=f"{model_name}, B={batch}", xlabel="T (steps)", ylabel="µs/step", xscale="log", yscale="log")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(results: dict, out_dir: Path) -> dict[str, Path]:
    from exporter import export_cost

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
                  export_cost_config=None) -> dict[str, Path]:
    """Runs the timing section (`config`, None: skipped) and the export-cost section
    (`export_cost_config`, an `exporter.export_cost.ExportCostConfig`; None: skipped)."""
    from exporter import export_cost

    with tempfile.TemporaryDirectory(prefix="seqexport-bench-") as tmp:
        results = run(config, Path(tmp), progress) if config is not None else {"versions": _versions()}
        if export_cost_config is not None:
            results["export_cost_config"] = dataclasses.asdict(export_cost_config)
            results["export_cost"] = export_cost.run(export_cost_config, Path(tmp), progress)
    return write(results, out_dir)
