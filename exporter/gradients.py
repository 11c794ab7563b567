"""One definition of "the gradient we check", shared by golden capture and verification.

The loss is a fixed random weighted sum of a signature's float outputs; its gradient
is taken w.r.t. the signature's float inputs and every trainable variable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf


def is_float(array) -> bool:
    return np.issubdtype(np.asarray(array).dtype, np.floating)


def weighted_loss(outputs: dict, weights: dict):
    """sum over keys of sum(weights[k] * outputs[k]); keys missing from `weights` do not count."""
    terms = [
        tf.reduce_sum(tf.cast(outputs[key], tf.float64) * tf.constant(w, tf.float64))
        for key, w in sorted(weights.items())
    ]
    return tf.add_n(terms) if terms else tf.constant(0.0, tf.float64)


def outputs_and_gradients(
    call: Callable[[dict], dict],
    feed: dict[str, np.ndarray],
    weights: dict[str, np.ndarray],
    variables: Sequence[tf.Variable],
) -> tuple[dict, dict, list]:
    """Runs `call(feed)` under a tape.

    Returns:
        (outputs, input_grads, variable_grads) as numpy; an unconnected gradient is zeros.
    """
    tensors = {k: tf.constant(v) for k, v in feed.items()}
    sources = {k: t for k, t in tensors.items() if t.dtype.is_floating}
    with tf.GradientTape(persistent=False) as tape:
        for tensor in sources.values():
            tape.watch(tensor)
        outputs = call(tensors)
        loss = weighted_loss(outputs, weights)
    keys = sorted(sources)
    grads = tape.gradient(
        loss,
        [sources[k] for k in keys] + list(variables),
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
    input_grads = {k: g.numpy() for k, g in zip(keys, grads[: len(keys)])}
    variable_grads = [_dense(g).numpy() for g in grads[len(keys) :]]
    return {k: v.numpy() for k, v in outputs.items()}, input_grads, variable_grads


def _dense(grad):
    return tf.convert_to_tensor(grad) if isinstance(grad, tf.IndexedSlices) else grad


def hessian_vector_product(
    call: Callable[[dict], dict], feed: dict[str, np.ndarray], weights: dict[str, np.ndarray],
    vector: np.ndarray, key: str = "inputs",
) -> np.ndarray:
    """H v, H the Hessian of the weighted loss w.r.t. `feed[key]` (nested tapes: forward over backward)."""
    tensors = {k: tf.constant(v) for k, v in feed.items()}
    source = tensors[key]
    with tf.GradientTape() as outer:
        outer.watch(source)
        with tf.GradientTape() as inner:
            inner.watch(source)
            loss = weighted_loss(call(tensors), weights)
        grad = inner.gradient(loss, source, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        directional = tf.reduce_sum(tf.cast(grad, tf.float64) * tf.constant(vector, tf.float64))
    hvp = outer.gradient(directional, source, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return hvp.numpy()


def second_order(
    call: Callable[[dict], dict], feed: dict[str, np.ndarray], weights: dict[str, np.ndarray],
    vector: np.ndarray, variables: Sequence, key: str = "inputs",
) -> dict[str, np.ndarray]:
    """Second derivatives of the weighted loss L through `call`, w.r.t. `feed[key]` (x) and `variables`:

    - `Hv/<key>`: the Hessian-vector product d/dx <dL/dx, vector>;
    - `penalty d/<key>` and `penalty d/var/<i>`: d/dx and d/dW of the input-gradient penalty
      ||dL/dx||^2 (the seed's regulariser).

    Two nested-tape passes (a persistent outer tape was measured slower: it builds TF's
    higher-order functions anew for each gradient it is asked).
    """
    tensors = {k: tf.constant(v) for k, v in feed.items()}
    source = tensors[key]

    def nested(target, sources):
        with tf.GradientTape() as outer:
            outer.watch(source)
            with tf.GradientTape() as inner:
                inner.watch(source)
                loss = weighted_loss(call(tensors), weights)
            grad = tf.cast(inner.gradient(loss, source, unconnected_gradients=tf.UnconnectedGradients.ZERO),
                           tf.float64)
            value = target(grad)
        return outer.gradient(value, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    penalty = nested(lambda g: tf.reduce_sum(g * g), [source, *variables])
    (hvp,) = nested(lambda g: tf.reduce_sum(g * tf.constant(vector, tf.float64)), [source])
    result = {f"Hv/{key}": hvp.numpy(), f"penalty d/{key}": _dense(penalty[0]).numpy()}
    result.update({f"penalty d/var/{i}": _dense(g).numpy() for i, g in enumerate(penalty[1:])})
    return result
