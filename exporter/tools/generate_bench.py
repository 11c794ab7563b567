"""Tokens per second of `generate` in one request, against the loops it replaces.

A character model as keras.io's and the TF tutorial's (Embedding(64, 32), LSTM(128), Dense(64)
logits) is exported and served by `seqexport serve` in a child process on 127.0.0.1. For B=1 and
B=8, a prompt of 16 ids and 64 new tokens (greedy), interleaved and repeated (medians):
- `generate`: one gRPC request;
- `step loop`: the client loop TF Serving users write: `stream` over the prompt, then one `step`
  request per token over gRPC, the argmax taken on the client, the state sent both ways each time;
- `keras loop`: the Python loop over the Keras model (append the argmax, run it on the sequence again).
The three must agree id for id; the table says whether they do.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np

from exporter.tools.timing import interleaved_medians
from serving.client import GrpcClient
from serving.server.server import server_process

VOCAB, PROMPT, NEW_TOKENS, BATCHES, REPEATS = 64, 16, 64, (1, 8), 5


def build_model():
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 32, embeddings_initializer=keras.initializers.RandomNormal(stddev=1.5))(inputs)
    x = keras.layers.LSTM(128, return_sequences=True)(x)
    return keras.Model(inputs, keras.layers.Dense(VOCAB)(x))


def _keras_loop(model, prompt: np.ndarray) -> np.ndarray:
    sequence = prompt
    for _ in range(NEW_TOKENS):
        following = np.argmax(np.asarray(model(sequence, training=False))[:, -1], axis=-1).astype(np.int32)
        sequence = np.concatenate([sequence, following[:, None]], axis=1)
    return sequence[:, prompt.shape[1]:]


def _step_loop(client, name: str, prompt: np.ndarray, state_names: list[str], zeros: dict) -> np.ndarray:
    result = client.predict(name, {"inputs": prompt, **zeros}, signature="stream")
    states = {k: result[k] for k in state_names}
    logits = result["outputs"][:, -1]
    chosen = []
    for _ in range(NEW_TOKENS):
        ids = np.argmax(logits, axis=-1).astype(np.int32)
        chosen.append(ids)
        result = client.predict(name, {"x": ids, **states}, signature="step")
        states = {k: result[k] for k in state_names}
        logits = result["y"]
    return np.stack(chosen, axis=1)


def run(workdir: Path, progress=lambda _: None) -> dict:
    """The `generate` rows: per batch size, tokens/s of each variant and the speed-ups."""
    from exporter.keras_model import step_model_from_keras
    from exporter.pipeline import write_export

    progress("generate: export")
    model = build_model()
    name = "chars"
    step_model = step_model_from_keras(model)
    manifest = write_export(step_model, workdir / name / "1", name=name, source={"kind": "bench"})
    state_names = [s.name for s in manifest.states]
    rows = []
    with contextlib.ExitStack() as stack:
        progress("generate: serve")
        server = stack.enter_context(server_process(workdir, "--name", name))
        client = stack.enter_context(GrpcClient(server.grpc_target))
        rng = np.random.default_rng(0)
        for batch in BATCHES:
            progress(f"generate: B={batch}")
            prompt = rng.integers(1, VOCAB, size=(batch, PROMPT)).astype(np.int32)
            zeros = {s.name: np.zeros((batch, *s.shape), np.float32) for s in manifest.states}
            feed = {"prompt": prompt, "max_new_tokens": np.int32(NEW_TOKENS), "temperature": np.float32(0.0),
                    "top_k": np.int32(0), "seed": np.int64(0)}
            variants = {
                "generate": lambda: client.predict(name, feed, signature="generate")["tokens"],
                "step loop": lambda: _step_loop(client, name, prompt, state_names, zeros),
                "keras loop": lambda: _keras_loop(model, prompt),
            }
            ids = {k: fn() for k, fn in variants.items()}
            seconds = interleaved_medians(variants, repeats=REPEATS)
            tokens = batch * NEW_TOKENS
            rates = {k: tokens / s for k, s in seconds.items()}
            rows.append({
                "batch": batch, "prompt": PROMPT, "new_tokens": NEW_TOKENS,
                "tokens_per_s": rates, "seconds": seconds,
                "vs_step_loop": rates["generate"] / rates["step loop"],
                "vs_keras_loop": rates["generate"] / rates["keras loop"],
                "ids_agree": bool(all(np.array_equal(ids["generate"], v) for v in ids.values())),
            })
    return {"model": f"Embedding({VOCAB}, 32) LSTM(128) Dense({VOCAB}) logits", "rows": rows}


def run_in_temp(progress=lambda _: None) -> dict:
    with tempfile.TemporaryDirectory(prefix="seqexport-generate-bench-") as tmp:
        return run(Path(tmp), progress)
