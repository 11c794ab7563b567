"""Models shaped like the ones users have: probed layers, causal convolutions, returned states, dtypes."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tests.exporter.models import F

L = keras.layers


@keras.saving.register_keras_serializable(package="seqexport_tests")
class FeatureGate(L.Layer):
    """A custom per-step layer with no opt-in: the probe must find it per-step."""

    def build(self, input_shape):
        self.gate = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gate")

    def call(self, x):
        return x * tf.sigmoid(self.gate)


@keras.saving.register_keras_serializable(package="seqexport_tests")
class RunningSum(L.Layer):
    """Mixes time (a cumulative sum): the probe must refuse it, naming the past offsets."""

    def call(self, x):
        return tf.cumsum(x, axis=1)


def _seq(*layers, shape=(None, F), dtype="float32"):
    return keras.Sequential([keras.Input(shape, dtype=dtype), *layers])


def _normalization():
    norm = L.Normalization()
    norm.adapt(np.random.default_rng(0).normal(3.0, 2.0, size=(16, 5, F)).astype("float32"))
    return _seq(norm, L.LSTM(4, return_sequences=True), L.Dense(2))


def _return_state_c():
    x = keras.Input((None, F))
    _, _, c = L.LSTM(4, return_state=True)(x)
    return keras.Model(x, L.Dense(2)(c))


def _return_state_h_gru():
    x = keras.Input((None, F))
    _, h = L.GRU(4, return_sequences=True, return_state=True)(x)
    return keras.Model(x, L.Dense(2)(h))


def _nested():
    encoder = keras.Sequential([keras.Input((None, F)), L.Dense(5, activation="relu"), L.GRU(4, return_sequences=True)],
                               name="encoder")
    return _seq(encoder, L.Dense(2))


def _float64():
    return _seq(L.Dense(4, dtype="float64"), L.LSTM(4, return_sequences=True, dtype="float64"),
                L.Dense(2, dtype="float64"), dtype="float64")


def _mixed(policy):
    def build():
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(policy)
        try:
            return _seq(L.GRU(4, return_sequences=True), L.Dense(2, dtype="float32"))
        finally:
            keras.config.set_dtype_policy(previous)
    return build


def _residual():
    x = keras.Input((None, F))
    h = L.Dense(4)(x)
    return keras.Model(x, L.Dense(2)(L.Add()([h, L.GRU(4, return_sequences=True)(h)])))


def _head_on_h_and_c():
    x = keras.Input((None, F))
    _, h, c = L.LSTM(4, return_state=True)(x)
    return keras.Model(x, L.Dense(2)(L.Concatenate()([h, c])))


def _two_branches_shared_dense():
    x = keras.Input((None, F))
    shared = L.Dense(4, activation="tanh")
    left = L.SimpleRNN(3, return_sequences=True)(shared(x))
    right = L.GRU(3, return_sequences=True)(shared(L.Rescaling(2.0)(x)))
    return keras.Model(x, L.Multiply()([left, right]))


def _residual_tcn():
    x = keras.Input((None, F))
    h = L.Conv1D(4, 1)(x)
    for dilation in (1, 2, 4):
        h = L.Add()([h, L.Conv1D(4, 2, padding="causal", dilation_rate=dilation, activation="relu")(h)])
    return keras.Model(x, L.Dense(2)(h))


def _keras_ops():
    x = keras.Input((None, F))
    y = L.Dense(4)(x) + L.GRU(4, return_sequences=True)(x)  # keras ops, not layers
    return keras.Model(x, y[:, :, :2] * 2.0)


STREAMABLE = {
    "pre_padded_mask": lambda: _seq(L.Embedding(20, 5, mask_zero=True), L.GRU(4, return_sequences=True),
                                    L.Dense(2), shape=(None,), dtype="int32"),
    "normalization": _normalization,
    "rescaling": lambda: _seq(L.Rescaling(0.5, offset=0.1), L.GRU(4, return_sequences=True)),
    "reshape_and_flatten": lambda: _seq(L.Dense(6), L.Reshape((-1, 2, 3)), L.TimeDistributed(L.Flatten()),
                                        L.SimpleRNN(4, return_sequences=True)),
    "custom_layer": lambda: _seq(FeatureGate(), L.LSTM(4, return_sequences=True)),
    "nested_sequential": _nested,
    "stacked_cells": lambda: _seq(L.RNN(L.StackedRNNCells([L.LSTMCell(4), L.GRUCell(3)]), return_sequences=True)),
    "lstm_options": lambda: _seq(L.LSTM(4, return_sequences=True, use_bias=False, activation="relu",
                                        dropout=0.3, recurrent_dropout=0.3)),
    "causal_conv": lambda: _seq(L.Conv1D(4, 3, padding="causal", dilation_rate=2), L.LSTM(4, return_sequences=True)),
    "tcn": lambda: _seq(*[L.Conv1D(4, 2, padding="causal", dilation_rate=d, activation="relu") for d in (1, 2, 4)],
                        L.Dense(2)),
    "return_state_c": _return_state_c,
    "return_state_h_gru": _return_state_h_gru,
    "float64": _float64,
    "float64_input": lambda: _seq(L.LSTM(4, return_sequences=True), dtype="float64"),
    "mixed_float16": _mixed("mixed_float16"),
    "mixed_bfloat16": _mixed("mixed_bfloat16"),
    "convlstm1d": lambda: _seq(L.ConvLSTM1D(2, 3, padding="same", return_sequences=True), L.TimeDistributed(L.Flatten()),
                               shape=(None, 5, F)),
    "residual": _residual,
    "keras_ops": _keras_ops,
    "head_on_h_and_c": _head_on_h_and_c,
    "two_branches_shared_dense": _two_branches_shared_dense,
    "residual_tcn": _residual_tcn,
    "convlstm2d": lambda: _seq(L.ConvLSTM2D(2, 3, padding="same", return_sequences=True),
                               L.TimeDistributed(L.Flatten()), shape=(None, 4, 4, 2)),
}

# name: (builder, what the message must contain)
NOT_STREAMABLE = {
    "flatten_over_time": (lambda: _seq(L.LSTM(4, return_sequences=True), L.Flatten(), shape=(6, F)),
                          "does not keep the time axis"),
    "valid_conv": (lambda: _seq(L.Conv1D(4, 3, padding="valid"), L.LSTM(4)), "does not keep the time axis"),
    "same_conv": (lambda: _seq(L.Conv1D(4, 3, padding="same"), L.LSTM(4)),
                  "out[t] depends on in[t-1], in[t+1]"),
    "running_sum": (lambda: _seq(RunningSum(), L.LSTM(4)), "out[t] depends on in[t-4], in[t-3], in[t-2], in[t-1]"),
    "global_pooling": (lambda: _seq(L.LSTM(4, return_sequences=True), L.GlobalAveragePooling1D()),
                       "does not keep the time axis"),
}


# --- several outputs: a list or dict of Keras outputs, each returned by name -----------------------------

def _two_heads_on_gru():
    x = keras.Input((None, F))
    h = L.GRU(4, return_sequences=True)(x)
    return keras.Model(x, [L.Dense(2, name="left")(h), L.Dense(1, activation="sigmoid", name="right")(h)])


def _head_and_lstm_states():
    x = keras.Input((None, F))
    sequence, h, c = L.LSTM(4, return_sequences=True, return_state=True, name="lstm")(x)
    return keras.Model(x, [L.Dense(2, name="head")(sequence), h, c])


def _dict_of_outputs():
    x = keras.Input((None, F))
    h = L.SimpleRNN(3, return_sequences=True)(L.Dense(4, activation="tanh")(x))
    last = L.GRU(2, name="summary")(h)  # the last step only: `serving_default` returns [B, 2]
    return keras.Model(x, {"scores": L.Dense(3, name="scores_head")(h), "summary": last})


# name: (builder, the output keys of `serving_default`, `stream` and `step` in order, which are last-step)
SEVERAL_OUTPUTS = {
    "two_heads_on_gru": (_two_heads_on_gru, ("left", "right"), ()),
    "head_and_lstm_states": (_head_and_lstm_states, ("head", "lstm_final_h", "lstm_final_c"),
                             ("lstm_final_h", "lstm_final_c")),
    "dict_of_outputs": (_dict_of_outputs, ("scores", "summary"), ("summary",)),
}


# --- masks through a graph: Keras's mask of each tensor, step by step -------------------------------------

VOCAB = 20


def _masked_gru_branches():
    """Token ids with 0 as padding: two GRU branches, concatenated (the mask is the ids' own), a head."""
    ids = keras.Input((None,), dtype="int32")
    embedded = L.Embedding(VOCAB, 5, mask_zero=True)(ids)
    left = L.GRU(4, return_sequences=True)(embedded)
    right = L.GRU(3, return_sequences=True)(L.Dense(4, activation="relu")(embedded))
    return keras.Model(ids, L.Dense(2)(L.Concatenate()([left, right])))


def _masked_residual_lstm():
    """Masked frames: an LSTM with a residual add of a Dense of the masked frames (both masked: the
    add passes the mask on), into a last LSTM that returns its last step, then a head."""
    x = keras.Input((None, F))
    masked = L.Masking(0.0)(x)
    h = L.Add()([L.LSTM(4, return_sequences=True)(masked), L.Dense(4)(masked)])
    return keras.Model(x, L.Dense(2)(L.LSTM(3)(h)))


def _masked_head_and_state():
    """Masked frames, two outputs: a per-step head and the LSTM's last state `h`."""
    x = keras.Input((None, F))
    sequence, h, _ = L.LSTM(4, return_sequences=True, return_state=True, name="lstm")(L.Masking(0.0)(x))
    return keras.Model(x, {"per_step": L.Dense(2, name="head")(sequence), "last_h": h})


def _mask_dropped_by_add():
    """Keras's rule, not a guess: `Add` of a masked tensor and an unmasked one (a Dense of the raw
    frames) has no mask, so the second GRU runs over the padded steps too."""
    x = keras.Input((None, F))
    h = L.Add()([L.GRU(4, return_sequences=True)(L.Masking(0.0)(x)), L.Dense(4)(x)])
    return keras.Model(x, L.GRU(3, return_sequences=True)(h))


# name: (builder, output keys (one output: "outputs"), which are last-step, input dtype)
MASKED_GRAPHS = {
    "masked_gru_branches": (_masked_gru_branches, ("outputs",), (), "int32"),
    "masked_residual_lstm": (_masked_residual_lstm, ("outputs",), ("outputs",), "float32"),
    "masked_head_and_state": (_masked_head_and_state, ("last_h", "per_step"), ("last_h",), "float32"),
    "mask_dropped_by_add": (_mask_dropped_by_add, ("outputs",), (), "float32"),
}


def _masked_initial_state():
    """Masked frames, and a static input setting the first GRU's state: Keras passes that GRU no mask
    (it steps through the padding), while the GRU after it skips the padded steps."""
    x, context = keras.Input((None, F), name="frames"), keras.Input((3,), name="context")
    h = L.GRU(4, return_sequences=True)(L.Masking(0.0)(x), initial_state=L.Dense(4, activation="tanh")(context))
    return keras.Model([x, context], L.Dense(2)(L.GRU(3, return_sequences=True)(h)))


def _masked_ids_with_speaker():
    """Token ids (`mask_zero=True`) concatenated per step with a repeated speaker vector, into an LSTM."""
    ids, speaker = keras.Input((None,), dtype="int32", name="ids"), keras.Input((2,), name="speaker")
    repeated = L.RepeatVector(STATIC_STEPS)(L.Dense(3, activation="tanh")(speaker))
    h = L.LSTM(4, return_sequences=True)(L.Concatenate()([L.Embedding(VOCAB, 3, mask_zero=True)(ids), repeated]))
    return keras.Model([ids, speaker], L.Dense(2)(h))


# name: (builder, static input names, sequence dtype)
MASKED_STATIC = {
    "masked_initial_state": (_masked_initial_state, ("context",), "float32"),
    "masked_ids_with_speaker": (_masked_ids_with_speaker, ("speaker",), "int32"),
}


# --- static inputs (no time axis, fed once per call): name -> (builder, static input names) ------------

STATIC_STEPS = 6  # `RepeatVector` needs the time axis fixed: the probes use this many steps


def _static_features_per_step():
    """Per-example features through a Dense, repeated over time and concatenated to every step."""
    x, features = keras.Input((STATIC_STEPS, F), name="frames"), keras.Input((3,), name="speaker")
    repeated = L.RepeatVector(STATIC_STEPS)(L.Dense(2, activation="tanh")(features))
    h = L.LSTM(4, return_sequences=True)(L.Concatenate()([x, repeated]))
    return keras.Model([x, features], L.Dense(2)(h))


def _static_initial_state():
    """Per-example features set a GRU's initial state through a Dense."""
    x, features = keras.Input((None, F), name="frames"), keras.Input((3,), name="context")
    h0 = L.Dense(5, activation="tanh")(features)
    return keras.Model([x, features], L.Dense(2)(L.GRU(5, return_sequences=True)(x, initial_state=h0)))


STATIC_INPUTS = {
    "static_features_per_step": (_static_features_per_step, ("speaker",)),
    "static_initial_state": (_static_initial_state, ("context",)),
}


# --- several sequence inputs (one time axis): name -> (builder, other sequence inputs, static inputs) -------

def _two_streams_into_lstm():
    """Two float feature streams `a [B, T, 4]` and `b [B, T, 3]` concatenated per step before an LSTM."""
    a, b = keras.Input((None, 4), name="a"), keras.Input((None, 3), name="b")
    h = L.LSTM(5, return_sequences=True)(L.Concatenate()([a, L.Dense(3, activation="tanh")(b)]))
    return keras.Model([a, b], L.Dense(2)(h))


def _tokens_features_and_static_into_gru():
    """Token ids `[B, T]` (Embedding) plus float features `[B, T, 3]` merged per step, plus a static
    input `[B, 2]` repeated over time, into a GRU."""
    # `(None,)` ids, T fixed by `RepeatVector` (fixed-length ids, `Input((9,))`: test_keras_graph.py).
    tokens, features = keras.Input((None,), dtype="int32", name="tokens"), keras.Input((None, 3), name="features")
    speaker = keras.Input((2,), name="speaker")
    merged = L.Concatenate()([L.Embedding(11, 4)(tokens), features, L.RepeatVector(SEQUENCE_STEPS)(speaker)])
    return keras.Model([tokens, features, speaker], L.Dense(2)(L.GRU(5, return_sequences=True)(merged)))


SEQUENCE_STEPS = 6  # the second model's `RepeatVector` fixes the time axis

SEQUENCE_INPUTS = {
    "two_streams_into_lstm": (_two_streams_into_lstm, ("b",), ()),
    "tokens_features_and_static_into_gru": (_tokens_features_and_static_into_gru, ("features",), ("speaker",)),
}


def two_outputs():
    """A factory for `seqexport export tests.exporter.real_models:two_outputs`."""
    return build("two_heads_on_gru")


def static_context():
    """A factory for `seqexport export tests.exporter.real_models:static_context` (a static input sets the GRU state)."""
    return build("static_initial_state")


def two_sequence_inputs():
    """A factory for `seqexport export tests.exporter.real_models:two_sequence_inputs`."""
    return build("two_streams_into_lstm")


def build(name: str) -> keras.Model:
    keras.utils.set_random_seed(7)
    entry = (STREAMABLE.get(name)
             or (SEVERAL_OUTPUTS.get(name) or STATIC_INPUTS.get(name) or MASKED_GRAPHS.get(name)
                 or MASKED_STATIC.get(name) or SEQUENCE_INPUTS.get(name) or (None,))[0]
             or NOT_STREAMABLE[name][0])
    model = entry()
    for variable in model.trainable_variables:
        if "bias" in variable.path:
            variable.assign(keras.random.normal(variable.shape, stddev=0.3, seed=3, dtype=variable.dtype))
    return model


# --- constructs still refused: factories for `seqexport export tests.exporter.real_models:NAME` ----------

class RecurrentLoop(keras.Model):
    def __init__(self):
        super().__init__()
        self.cell = L.LSTMCell(4)

    def call(self, x):
        state = [tf.zeros((tf.shape(x)[0], 4)), tf.zeros((tf.shape(x)[0], 4))]
        for t in range(x.shape[1]):
            out, state = self.cell(x[:, t], state)
        return out


def subclassed():
    model = RecurrentLoop()
    model(np.zeros((1, 3, F), "float32"))
    return model


def two_inputs():
    x, static = keras.Input((None, F)), keras.Input((2,))
    h = L.LSTM(4, return_sequences=True)(x)
    return keras.Model([x, static], L.Dense(2)(h) + L.Dense(2)(static)[:, None])


def last_step_into_rnn():
    x = keras.Input((None, F))
    h = L.LSTM(4)(x)
    return keras.Model(x, L.Add()([L.Dense(4)(x), L.GRU(4, return_sequences=True)(x)]) + h[:, None])


def self_attention():
    x = keras.Input((None, F))
    h = L.LSTM(4, return_sequences=True)(x)
    return keras.Model(x, L.MultiHeadAttention(1, 2)(h, h))


def bidirectional():
    return _seq(L.Bidirectional(L.LSTM(4, return_sequences=True)))


def go_backwards():
    return _seq(L.GRU(4, return_sequences=True, go_backwards=True))


def strided_causal_conv():
    return _seq(L.Conv1D(4, 3, padding="causal", strides=2), L.LSTM(4))


def running_sum():
    return _seq(RunningSum(), L.LSTM(4))


def masked_custom_cell():
    return _seq(L.Masking(0.0), L.RNN(L.StackedRNNCells([L.GRUCell(3), L.GRUCell(2)])))


def mask_on_another_sequence_input():
    a, b = keras.Input((None, F), name="a"), keras.Input((None, 2), name="b")
    h = L.GRU(2, return_sequences=True)(L.Concatenate()([a, L.Masking(0.0, name="pad")(b)]))
    return keras.Model([a, b], L.Dense(2)(h))


def no_recurrence():
    return _seq(L.Dense(4), L.Dense(2))


# function name: what the message must name
REFUSED_CONSTRUCTS = {
    "subclassed": "is subclassed and has no RNN layer to carry a state",
    "two_inputs": "merges a static input's tensor (no time axis) with a per-step or last-step one; a static "
                  "input may feed `RepeatVector`",
    "last_step_into_rnn": "merges a per-step tensor with a last-step one",
    "self_attention": "MultiHeadAttention",
    "bidirectional": "Bidirectional",
    "go_backwards": "go_backwards",
    "strided_causal_conv": "strides=2",
    "running_sum": "out[t] depends on in[t-",
    "masked_custom_cell": "masking is supported for SimpleRNN, GRU and LSTM cells only",
    "mask_on_another_sequence_input": "'pad' (Masking) cannot run step by step: it starts a Keras mask from a "
                                      "tensor other than the main sequence input",
    "no_recurrence": "no recurrent layer",
}
