"""Causal attention streamed on a key/value cache, and layers that read the position: explicit state.

A causal transformer is a stateful sequence model at inference: at step t the query attends to the
keys and values of steps 0..t, so they are the state. Each `MultiHeadAttention` that runs causally
keeps `<layer>_key` and `<layer>_value` (`[B, max_length, heads, dim]`): a step writes its own key
and value at its row's position and attends to the rows up to it, with the mask Keras's softmax
uses, so a row past the position weighs exactly zero. One `position` state per export (`[B]`,
float32: exact to 2**24) counts the steps each row has seen.

A layer whose output at t depends on in[t] and on t alone (a learned position embedding over
`ops.arange(T)`, sinusoidal encodings, a layer of your own doing the same) runs at step t on a
sequence of t+1 steps with the input at t and filler before it.

Neither is read from a layer's class or arguments: it is measured. The attention (or a block of
your own that calls it) is stepped on the cache over a probe sequence and must give its whole
call's numbers, and the masks it is given must not move with the data (a padding mask is not a
causal one); the position layer must give its whole call's numbers at every t whatever comes before
t. The verification proves both again on the export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from exporter.artifact.errors import UnsupportedModel
from exporter.artifact.specs import POSITION_STATE, StateSpec
# Probe agreement, relative to the whole call's scale (float32 and softmax sums in another order).
_PROBE_RTOL = 1e-5
_PROBE_RTOL_HALF = 2e-2


class Clock:
    """The position state: each row's step count while a step is traced, and the cache length.

    `position` is set by the step (`clocked`) before the layers run and read by them; `used`
    tells the builder whether any layer reads it (then the export carries the state).
    """

    def __init__(self, max_length: int | None):
        self.max_length = max_length
        self.position = None
        self.used = False
        self.caches: list[str] = []  # layers that keep a key/value cache
        self.findings: list[str] = []  # what the probes found, one line per layer, for the user

    @property
    def cache_length(self) -> int | None:
        """The caches' positions, None when no layer keeps a cache (the step model's `max_length`)."""
        return self.max_length if self.caches else None

    @staticmethod
    def spec() -> StateSpec:
        return StateSpec(name=POSITION_STATE, layer=POSITION_STATE, index=0, shape=(), dtype="float32")

    def rows(self):
        """Each row's position, int32 `[B]`."""
        return tf.cast(self.position, tf.int32)


def clocked(clock: Clock, step: Callable) -> Callable:
    """`step(x, states, *rest)` with the position as its last state: set for the layers, then one on."""

    def call(x, prev_states, *rest):
        clock.position = prev_states[-1]
        y, new = step(x, tuple(prev_states[:-1]), *rest)
        return y, (*new, prev_states[-1] + 1.0)

    return call


def attention_layers(layer) -> list:
    """The `MultiHeadAttention` layers `layer` is or holds."""
    return [l for l in layer._flatten_layers(include_self=True) if isinstance(l, keras.layers.MultiHeadAttention)]


def _probe_rtol(dtype: str) -> float:
    return _PROBE_RTOL_HALF if dtype in ("float16", "bfloat16") else _PROBE_RTOL


def _worst(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want) / (1.0 + np.abs(want)), initial=0.0))


class KeyValueCache:
    """While a step runs: each attention layer's `call` reads its cache from `states` and writes back the
    cache with this step's keys and values added (its class's `call` again on leaving)."""

    def __init__(self, layers: list, clock: Clock):
        self.layers = layers
        self.clock = clock
        self.states: dict = {}
        self.calls: dict = {}

    def specs(self, sample) -> tuple[StateSpec, ...]:
        """`<layer>_key`, `<layer>_value` of each layer: shapes and dtypes from `sample()`, a probe call that
        runs every layer once (recorded by `recording`)."""
        shapes = {}
        with self.recording(shapes):
            sample()
        specs = []
        for layer in self.layers:
            if id(layer) not in shapes:
                raise ValueError(f"the probe call did not run its attention layer {layer.name!r}")
            for j, label in enumerate(("key", "value")):
                shape, dtype = shapes[id(layer)][j]
                specs.append(StateSpec(name=f"{layer.name}_{label}", layer=layer.name, index=j,
                                       shape=(self.clock.max_length, *shape), dtype=dtype))
        return tuple(specs)

    @contextlib.contextmanager
    def recording(self, shapes: dict, masks: list | None = None):
        """Within: each layer runs as it does, noting its key and value shapes (and the masks it is given)."""
        def wrap(layer, original):
            def call(query, value, key=None, attention_mask=None, use_causal_mask=False, **kwargs):
                key_input = value if key is None else key
                shapes[id(layer)] = [(tuple(int(d) for d in t.shape[2:]), t.dtype.name if hasattr(t.dtype, "name")
                                      else str(t.dtype))
                                     for t in (layer._key_dense(key_input), layer._value_dense(value))]
                if masks is not None:
                    masks.append((layer, attention_mask, use_causal_mask,
                                  [keras.src.backend.get_keras_mask(t) for t in (query, value, key_input)]))
                return original(query, value, key=key, attention_mask=attention_mask,
                                use_causal_mask=use_causal_mask, **kwargs)
            return call

        with self._patched(wrap):
            yield

    @contextlib.contextmanager
    def into(self, states: dict):
        """Within: each layer attends over `states[layer]` (key, value) plus this call's steps."""
        self.states = dict(states)
        self.calls = {}
        with self._patched(lambda layer, original: self._cached(layer)):
            yield self

    @contextlib.contextmanager
    def _patched(self, wrap: Callable):
        originals = {id(layer): layer.call for layer in self.layers}
        for layer in self.layers:
            layer.call = wrap(layer, originals[id(layer)])
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.call  # the class's own again

    def _cached(self, layer) -> Callable:
        clock = self.clock

        def call(query, value, key=None, attention_mask=None, use_causal_mask=False, training=None, **kwargs):
            # The mask of the whole call is causal (proven by the probe): the step builds it for the cache.
            del attention_mask, use_causal_mask, kwargs
            self.calls[id(layer)] = self.calls.get(id(layer), 0) + 1
            key = value if key is None else key
            gate = layer._gate_dense(query) if getattr(layer, "_use_gate", False) else None
            q, k, v = layer._query_dense(query), layer._key_dense(key), layer._value_dense(value)
            cached_k, cached_v = self.states[layer]
            at = cache_rows(clock.rows(), tf.shape(q)[1])
            check = tf.debugging.assert_less(
                tf.reduce_max(at), clock.max_length,
                message=f"stream past max_length={clock.max_length}: {layer.name!r} keeps keys and values of "
                        f"{clock.max_length} positions (export again with a larger --max-length); the position "
                        "and max_length")
            with tf.control_dependencies([check]):
                batch = tf.shape(q)[0]
                rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(at))
                where = tf.stack([rows, at], axis=-1)
                cached_k = tf.tensor_scatter_nd_update(cached_k, where, tf.cast(k, cached_k.dtype))
                cached_v = tf.tensor_scatter_nd_update(cached_v, where, tf.cast(v, cached_v.dtype))
            self.states[layer] = (cached_k, cached_v)
            seen = tf.reduce_max(at) + 1  # attend to rows 0..the last position of any row: O(t), not O(max_length)
            mask = tf.range(seen)[None, None, :] <= at[:, :, None]  # [B, n, seen]: Keras's causal mask, shifted
            output, _ = layer._compute_attention(q, cached_k[:, :seen], cached_v[:, :seen], mask, training=False)
            if gate is not None:
                output = output * gate
            return layer._output_dense(output)

        return call


def cache_rows(position, steps):
    """`[B, steps]`: the cache row of each of a chunk's steps, from each row's position `[B]`."""
    return position[:, None] + tf.range(steps)[None, :]


def cached_attention(layer, where: str, clock: Clock, call_step: Callable, probe_input: Callable):
    """The states and the cached step of `layer` (an attention layer or a block holding some), once a probe
    shows that stepping it on the cache gives its whole call's numbers.

    Args:
        where: names the layer in messages ("layer 3 'block' (TransformerBlock)").
        call_step: `(layer, inputs [B, T, ...] list) -> output [B, T, ...]`: the layer's call as the model
            makes it, on sequences (a chunk of one step at a time, or the whole probe).
        probe_input: `(seed) -> list of [2, T, ...] arrays`, the layer's inputs for a probe.

    Returns:
        (state specs, `step(values [B, ...] list, states) -> (output [B, ...], new states)`), or a str: why not
        (its mask depends on the data, or stepped on the cache it gives other numbers).

    Raises:
        UnsupportedModel: it streams, but the cache needs a length (`--max-length`) that nothing fixes.
    """
    layers = attention_layers(layer)
    first, second = probe_input(1), probe_input(2)
    steps = first[0].shape[1]
    probing = Clock(max(clock.max_length or 0, steps))
    cache = KeyValueCache(layers, probing)
    masks: list = []
    with cache.recording({}, masks):
        whole = np.asarray(call_step(layer, [tf.constant(a) for a in first]))
    with cache.recording({}, masks):
        call_step(layer, [tf.constant(np.zeros_like(a)) for a in second])
    why = _non_causal_masks(masks, steps)
    if why is not None:
        return why
    specs = cache.specs(lambda: call_step(layer, [tf.constant(a[:, :1]) for a in first]))
    batch = first[0].shape[0]

    def stepping(kv_cache: KeyValueCache):
        def step(values, states):
            by_layer = {l: (states[2 * j], states[2 * j + 1]) for j, l in enumerate(layers)}
            with kv_cache.into(by_layer):
                output = call_step(layer, [v[:, None] for v in values])
                if any(kv_cache.calls.get(id(l), 0) != 1 for l in layers):
                    raise ValueError("an attention layer ran other than once per call")
                new = tuple(s for l in layers for s in kv_cache.states[l])
            return output[:, 0], new
        return step

    probe_step = stepping(cache)
    states = tuple(tf.zeros((batch, *s.shape), s.dtype) for s in specs)
    worst = 0.0
    try:
        for t in range(steps):
            probing.position = tf.fill([batch], float(t))
            out, states = probe_step([tf.constant(a[:, t]) for a in first], states)
            worst = max(worst, _worst(out, whole[:, t]))
    except ValueError as exc:
        return f"stepped on a key/value cache it fails ({str(exc).splitlines()[0][:200]})"
    if worst > _probe_rtol(str(whole.dtype)):
        return (f"stepped on a key/value cache it gives other numbers than its whole call (max relative difference "
                f"{worst:.2e}): it is not causal")
    if clock.max_length is None:
        raise UnsupportedModel(
            f"{where[0].upper()}{where[1:]} attends causally: it streams on a key/value cache of a fixed number of "
            "positions, and the model's input does not fix its length. Pass --max-length N (max_length= from "
            "Python), the longest sequence a session will stream.")
    clock.used = True
    clock.caches.append(layer.name)
    clock.findings.append(f"{where}: causal attention, stepped on a key/value cache of {clock.max_length} positions "
                          f"(its probe gives its whole call's numbers to {worst:.1e}; its masks are lower-triangular)")
    real = KeyValueCache(layers, clock)
    return real.specs(lambda: call_step(layer, [tf.constant(a[:, :1]) for a in first])), stepping(real)


def _non_causal_masks(masks: list, steps: int) -> str | None:
    """Why the masks recorded over the probes are not the causal one alone (None: they are)."""
    causal = np.tril(np.ones((steps, steps), bool))
    for layer, attention_mask, use_causal_mask, keras_masks in masks:
        if any(m is not None for m in keras_masks):
            return (f"its attention {layer.name!r} is given a Keras mask (padding) with its inputs; a key/value cache "
                    "streams causal attention without one")
        if getattr(layer, "_sliding_window", None) is not None:
            return f"its attention {layer.name!r} has a sliding window"
        if attention_mask is None:
            if not use_causal_mask:
                return f"its attention {layer.name!r} is called without a causal mask: each step attends to later ones"
            continue
        given = np.asarray(attention_mask).astype(bool)
        given = np.broadcast_to(given, (*given.shape[:-2], steps, steps)) if given.ndim >= 2 else given
        if use_causal_mask:
            given = given & causal
        if given.ndim < 2 or not np.array_equal(given.reshape(-1, steps, steps), np.broadcast_to(
                causal, (given.reshape(-1, steps, steps).shape[0], steps, steps))):
            return (f"its attention {layer.name!r} is given an attention_mask that is not lower-triangular on every "
                    "probe (it depends on the data, or lets a step see later ones)")
    return None


def positional(layer, where: str, clock: Clock, probe_input: Callable) -> Callable | str:
    """`layer`'s step at each row's position, once a probe shows its output at t depends on in[t] and on t
    alone (else why not): a sequence of t+1 steps, the input at t, zeros before it.

    Args:
        probe_input: `(seed) -> [2, T, ...] array`, the layer's input for a probe.
    """
    first, filler = probe_input(1), probe_input(2)
    whole = np.asarray(layer(tf.constant(first), training=False))
    if whole.ndim < 2 or whole.shape[:2] != first.shape[:2]:
        return "it does not keep the time axis"
    worst = 0.0
    for t in range(first.shape[1]):
        shifted = np.concatenate([filler[:, :t], first[:, t:t + 1]], axis=1)
        worst = max(worst, _worst(np.asarray(layer(tf.constant(shifted), training=False))[:, t], whole[:, t]))
    if worst > _probe_rtol(str(whole.dtype)):
        return f"out[t] depends on in[t] and on earlier steps (max relative difference {worst:.2e} with other filler)"
    clock.used = True
    clock.findings.append(f"{where}: out[t] depends on in[t] and on t alone (other steps before t change nothing, "
                          f"to {worst:.1e}): it runs at each row's position")

    def step(x):
        position = clock.rows()
        steps = tf.reduce_max(position) + 1
        at = tf.equal(tf.range(steps)[None, :], position[:, None])  # [B, steps]: each row's t
        at = tf.reshape(at, tf.concat([tf.shape(at), tf.ones([len(x.shape) - 1], tf.int32)], 0))
        sequence = tf.where(at, x[:, None], tf.zeros_like(x[:, None]))  # [B, steps, ...]: x at each row's t
        return tf.gather(layer(sequence, training=False), position, batch_dims=1)

    return step
