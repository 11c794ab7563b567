"""What an export costs: `seqexport export` against Keras's own `model.export()`, by model size.

Both run as fresh processes from the same `.keras` file (TensorFlow's import and, for
seqexport, the fresh-process verification included), interleaved per size with the
order alternated, so a noisy neighbour slows both. seqexport's time is split into
its phases and its verification into checks, with the verifier's peak RSS: the
cost must grow no faster than the parameter count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

FEATURES = 32
HEAD = 8
CHILD_TIMEOUT_S = 3600

_KERAS_EXPORT = """
import sys
import keras
keras.saving.load_model(sys.argv[1]).export(sys.argv[2], verbose=False)
"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportCostConfig:
    """Which stacks to export: `kind(units) x layers` for every combination, then the `whole` models
    (whole-sequence exports: `(kind, units, layers)` each)."""

    kinds: tuple[str, ...] = ("lstm", "gru", "srnn")
    units: tuple[int, ...] = (64, 128, 256, 512, 1024)
    layers: tuple[int, ...] = (1, 2)
    # keras.io's Bidirectional(LSTM(128)) text classifier and a 2-block transformer classifier.
    whole: tuple[tuple[str, int, int], ...] = (("bilstm", 128, 2), ("transformer", 64, 2))
    repeats: int = 1

    @classmethod
    def quick(cls) -> "ExportCostConfig":
        return cls(kinds=("lstm",), units=(16,), layers=(1,), whole=(("bilstm", 8, 1),))


# Token ids of the text classifier, and the length of the transformer's sequences.
VOCAB, TRANSFORMER_STEPS = 1000, 64


def build_model(kind: str, units: int, layers: int, path: Path) -> int:
    """A model of `kind`, trained a few batches, saved; returns #params. `lstm`/`gru`/`srnn`: `layers` RNNs of
    `units` on 32 features + Dense(8). `bilstm`: token ids, an Embedding, `layers` Bidirectional(LSTM(units)), a
    sigmoid (keras.io's IMDB classifier). `transformer`: `layers` blocks of MultiHeadAttention (key_dim `units`)
    and a feed-forward network with residuals, pooled over time, Dense(8)."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if kind == "bilstm":
        model, x, y = _bilstm(keras, units, layers), rng.integers(1, VOCAB, size=(32, 16)), rng.random((32, 1))
    elif kind == "transformer":
        model = _transformer(keras, units, layers)
        x, y = rng.normal(size=(32, TRANSFORMER_STEPS, FEATURES)), rng.normal(size=(32, HEAD))
    else:
        cell = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "srnn": keras.layers.SimpleRNN}[kind]
        model = keras.Sequential([keras.Input((None, FEATURES)),
                                  *[cell(units, return_sequences=True) for _ in range(layers)],
                                  keras.layers.Dense(HEAD)], name=f"{kind}{units}x{layers}")
        x, y = rng.normal(size=(32, 16, FEATURES)), rng.normal(size=(32, 16, HEAD))
    model.compile(optimizer="adam", loss="mse")
    model.fit(x.astype("int32" if kind == "bilstm" else "float32"), y.astype("float32"), batch_size=16, epochs=1,
              verbose=0)
    model.save(path)
    return int(model.count_params())


def _bilstm(keras, units: int, layers: int):
    L = keras.layers
    stack = [L.Bidirectional(L.LSTM(units, return_sequences=i < layers - 1)) for i in range(layers)]
    return keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(VOCAB, 128), *stack,
                             L.Dense(1, activation="sigmoid")], name=f"bilstm{units}x{layers}")


def _transformer(keras, units: int, layers: int):
    L = keras.layers
    inputs = keras.Input((TRANSFORMER_STEPS, FEATURES))
    x = inputs
    for _ in range(layers):
        attended = L.MultiHeadAttention(num_heads=4, key_dim=units)(x, x)
        x = L.LayerNormalization(epsilon=1e-6)(x + attended)
        forward = L.Dense(FEATURES)(L.Dense(4 * FEATURES, activation="relu")(x))
        x = L.LayerNormalization(epsilon=1e-6)(x + forward)
    pooled = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(HEAD)(pooled), name=f"transformer{units}x{layers}")


def _child_env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _keras_export(model_file: Path, out: Path) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", _KERAS_EXPORT, str(model_file), str(out)], check=True,
                   capture_output=True, env=_child_env(), timeout=CHILD_TIMEOUT_S)
    return time.monotonic() - started


def _seqexport_export(model_file: Path, base: Path) -> tuple[float, dict]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "exporter.cli.app", "export", str(model_file), "--name", "m",
                           "--base", str(base), "--json"], capture_output=True, text=True, env=_child_env(),
                          timeout=CHILD_TIMEOUT_S)
    seconds = time.monotonic() - started
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        result = {"error": "no JSON on stdout; stderr ends: " + " | ".join(proc.stderr.strip().splitlines()[-5:])}
    if proc.returncode != 0:
        raise RuntimeError(f"seqexport export {model_file.name} failed (exit {proc.returncode}): {result.get('error')}")
    return seconds, result


def run(config: ExportCostConfig, workdir: Path, progress: Callable[[str], None] = lambda _: None) -> list[dict]:
    """One row per model size: both tools' wall times (medians), seqexport's phases and checks."""
    rows = []
    sizes = [(k, u, n) for k in config.kinds for n in config.layers for u in config.units] + list(config.whole)
    for index, (kind, units, layers) in enumerate(sizes):
        label = f"{kind}({units}) x {layers}"
        progress(f"export cost: building {label}")
        model_file = workdir / f"{kind}{units}x{layers}.keras"
        params = build_model(kind, units, layers, model_file)
        keras_times, seq_times, results = [], [], []
        for repeat in range(config.repeats):
            order = ("keras", "seqexport") if (index + repeat) % 2 == 0 else ("seqexport", "keras")
            for tool in order:
                progress(f"export cost: {label}, {tool}")
                out = workdir / f"{tool}-{index}-{repeat}"
                if tool == "keras":
                    keras_times.append(_keras_export(model_file, out))
                else:
                    seconds, result = _seqexport_export(model_file, out)
                    seq_times.append(seconds)
                    results.append(result)
        last = results[-1]
        verify = last["verify"]
        rows.append({
            "kind": kind, "units": units, "layers": layers, "params": params,
            "keras_export_s": statistics.median(keras_times), "seqexport_s": statistics.median(seq_times),
            "ratio_vs_keras": statistics.median(seq_times) / statistics.median(keras_times),
            "phases_s": {k: v for k, v in last["timings"].items() if k != "total"},
            "verify_checks_s": verify["timings"],
            "verify_peak_rss_mb": verify["peak_rss_mb"],
            "checks": len(verify["checks"]),
            "passed": verify["passed"],
            "whole_sequence": any(c.get("not_applicable") for c in verify["checks"]),
        })
    return rows


def growth(row: dict, rows: list[dict]) -> float | None:
    """(time / time of the smallest model of its kind and depth) / (params / its params): <= 1 is linear or better."""
    peers = [r for r in rows if r["kind"] == row["kind"] and r["layers"] == row["layers"]]
    smallest = min(peers, key=lambda r: r["params"])
    if smallest is row:
        return None
    return (row["seqexport_s"] / smallest["seqexport_s"]) / (row["params"] / smallest["params"])


def markdown(rows: list[dict]) -> str:
    """The export-cost table: both tools, the ratio, growth against parameters, the costliest check."""
    lines = ["## Export cost: `seqexport export` (with fresh-process verification) vs Keras `model.export()`", "",
             "growth = (seconds / seconds of the smallest model of that kind and depth) / (params / its params); "
             "at most 1: the cost grows no faster than the model.", "",
             "| model | params | keras s | seqexport s | ratio | growth | load / trace / golden / save / "
             "verify / publish s | costliest check | verifier peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        phases = row["phases_s"]
        split = " / ".join(f"{phases.get(k, 0.0):.1f}" for k in ("load", "trace", "golden", "save", "verify", "publish"))
        checks = {k: v for k, v in row["verify_checks_s"].items() if k not in ("start", "load")}
        costliest = max(checks, key=checks.get) if checks else "-"
        rate = growth(row, rows)
        lines.append(
            f"| {row['kind']}({row['units']}) x {row['layers']} | {row['params']:,} | {row['keras_export_s']:.1f} | "
            f"{row['seqexport_s']:.1f} | {row['ratio_vs_keras']:.1f} | "
            f"{'-' if rate is None else f'{rate:.2f}'} | {split} | "
            f"{costliest} {checks.get(costliest, 0.0):.1f} s | {row['verify_peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Export seconds against parameters, log-log, one line per tool and cell kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for kind in sorted({r["kind"] for r in rows}):
        points = sorted((r["params"], r["seqexport_s"], r["keras_export_s"]) for r in rows if r["kind"] == kind)
        params = [p[0] for p in points]
        axis.plot(params, [p[1] for p in points], marker="o", label=f"seqexport {kind}")
        axis.plot(params, [p[2] for p in points], marker="x", linestyle="--", label=f"keras export {kind}")
    axis.set(title="export cost (fresh processes, verification included)", xlabel="trainable parameters",
             ylabel="seconds", xscale="log", yscale="log")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
