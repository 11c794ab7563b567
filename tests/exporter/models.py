"""Tiny Keras models, one per supported layer kind and option (built in code, seeded)."""

from __future__ import annotations

import keras

F = 3
T = 6  # equals ExportOptions().probe_steps, for the models that fix T (unroll=True)


def _sequential(*layers, input_shape=(None, F), batch=None, dtype="float32"):
    shape = (batch, *input_shape) if batch else None
    inputs = keras.Input(batch_shape=shape, dtype=dtype) if batch else keras.Input(input_shape, dtype=dtype)
    return keras.Sequential([inputs, *layers])


def _functional(*layers, input_shape=(None, F)):
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


L = keras.layers

SUPPORTED = {
    "simple_rnn": lambda: _sequential(L.SimpleRNN(4, return_sequences=True)),
    "gru_reset_after": lambda: _sequential(L.GRU(4, return_sequences=True, reset_after=True)),
    "gru_reset_before": lambda: _sequential(L.GRU(4, return_sequences=True, reset_after=False)),
    "lstm": lambda: _sequential(L.LSTM(4, return_sequences=True)),
    "stacked_functional": lambda: _functional(
        L.LSTM(5, return_sequences=True), L.GRU(4, return_sequences=True), L.Dense(2)
    ),
    "stateful": lambda: _sequential(
        L.LSTM(4, return_sequences=True, stateful=True), L.SimpleRNN(3, return_sequences=True, stateful=True),
        batch=2,
    ),
    "unroll": lambda: _sequential(L.SimpleRNN(4, return_sequences=True, unroll=True), input_shape=(T, F)),
    "last_step_only": lambda: _sequential(L.LSTM(4, return_sequences=True), L.GRU(4), L.Dense(2)),
    "per_step_layers": lambda: _functional(
        L.Dense(6, activation="relu"),
        L.Dropout(0.5),
        L.GRU(5, return_sequences=True),
        L.LayerNormalization(),
        L.Activation("tanh"),
        L.TimeDistributed(L.Dense(3)),
        L.BatchNormalization(),
    ),
    "embedding": lambda: _sequential(
        L.Embedding(20, 5), L.LSTM(4, return_sequences=True), input_shape=(None,), dtype="int32"
    ),
    "masking": lambda: _sequential(L.Masking(0.0), L.LSTM(4, return_sequences=True), L.Dense(2)),
    "masking_last_step": lambda: _sequential(L.Masking(0.0), L.GRU(4, return_sequences=True), L.SimpleRNN(3)),
    "masking_zero_output": lambda: _sequential(
        L.Masking(0.0), L.RNN(L.GRUCell(4), return_sequences=True, zero_output_for_mask=True), L.Dense(2)
    ),
    "embedding_mask_zero": lambda: _sequential(
        L.Embedding(20, 5, mask_zero=True), L.GRU(4, return_sequences=True), input_shape=(None,), dtype="int32"
    ),
    "generic_rnn_layer": lambda: _sequential(L.RNN(L.LSTMCell(4), return_sequences=True)),
}

UNSUPPORTED = {
    "bidirectional": (lambda: _sequential(L.Bidirectional(L.LSTM(4, return_sequences=True))), "Bidirectional"),
    "go_backwards": (lambda: _sequential(L.GRU(4, return_sequences=True, go_backwards=True)), "go_backwards"),
    "conv1d_same": (lambda: _sequential(L.Conv1D(4, 3, padding="same"), L.LSTM(4)), "Conv1D"),
    "global_pooling": (lambda: _sequential(L.LSTM(4, return_sequences=True), L.GlobalAveragePooling1D()),
                       "GlobalAveragePooling1D"),
    "rnn_after_last_step": (lambda: _sequential(L.LSTM(4), L.RepeatVector(2), L.LSTM(3)), "RepeatVector"),
}



def _summary_along_target():
    """Two inputs: a source of any length summarised by an LSTM, repeated along a target of 6 steps
    (keras.io's `addition_rnn` way of conditioning a decoder): whole-sequence, inputs `inputs`, `target`."""
    source = keras.Input((None, F), name="source")
    target = keras.Input((6, 3), name="target")
    summary = L.RepeatVector(6)(L.LSTM(4)(source))
    decoded = L.LSTM(4, return_sequences=True)(L.Concatenate()([target, summary]))
    return keras.Model([source, target], L.Dense(2)(decoded))


# Models that cannot stream, exported whole-sequence (`fall_back=True`): a Bidirectional LSTM, one masked
# (a whole-sequence export of it takes `lengths` too), and one of two inputs.
WHOLE_SEQUENCE = {
    "bidirectional": UNSUPPORTED["bidirectional"][0],
    "masked_bidirectional": lambda: _sequential(L.Masking(0.0), L.Bidirectional(L.LSTM(4, return_sequences=True)),
                                                L.Dense(2)),
    "two_inputs": _summary_along_target,
}


def build(name: str, table=SUPPORTED) -> keras.Model:
    keras.utils.set_random_seed(7)
    entry = table[name]
    model = (entry[0] if isinstance(entry, tuple) else entry)()
    # Nonzero biases, so a bias that does not come over is noticed.
    for variable in model.trainable_variables:
        if "bias" in variable.path:
            variable.assign(keras.random.normal(variable.shape, stddev=0.3, seed=3))
    return model
