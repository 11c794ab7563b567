"""Sequence models as the official Keras examples (keras.io) and TensorFlow tutorials build them.

Each builder follows its example's own model code (layers, their order and options, how inputs,
masks and states are wired), on smaller sizes so that the suite stays fast; its docstring names
the example. They are what users bring, so the exporter is held to them (tests/exporter/
test_official_examples.py).
"""

from __future__ import annotations

import keras
import numpy as np

L = keras.layers


def video_classifier() -> keras.Model:
    """keras.io "Video Classification with a CNN-RNN Architecture": frame features and a boolean frame
    mask, the mask given to the first GRU as `mask=` (20 frames x 2048 features there)."""
    frame_features_input = keras.Input((8, 12), name="frame_features")
    mask_input = keras.Input((8,), dtype="bool", name="frame_mask")
    x = L.GRU(16, return_sequences=True)(frame_features_input, mask=mask_input)
    x = L.GRU(8)(x)
    x = L.Dropout(0.4)(x)
    x = L.Dense(8, activation="relu")(x)
    output = L.Dense(5, activation="softmax")(x)
    return keras.Model([frame_features_input, mask_input], output)


def weather_forecaster() -> keras.Model:
    """keras.io "Timeseries forecasting for weather prediction": a fixed window `Input((120, 7))`, LSTM(32),
    Dense(1) (24 steps here)."""
    inputs = keras.Input(shape=(24, 7))
    lstm_out = L.LSTM(32)(inputs)
    outputs = L.Dense(1)(lstm_out)
    return keras.Model(inputs=inputs, outputs=outputs)


def character_lstm() -> keras.Model:
    """keras.io "Character-level text generation with LSTM": one-hot characters of a fixed window
    `Input((maxlen, len(chars)))`, LSTM(128), a softmax over the characters."""
    return keras.Sequential([keras.Input(shape=(10, 15)), L.LSTM(32), L.Dense(15, activation="softmax")])


def padded_review_classifier() -> keras.Model:
    """keras.io "Bidirectional LSTM on IMDB" inputs (`pad_sequences(maxlen=200)`: token ids of a fixed
    length, `Input((maxlen,), dtype="int32")`) into the one-direction stack of its LSTM examples."""
    inputs = keras.Input(shape=(12,), dtype="int32")
    x = L.Embedding(100, 16)(inputs)
    x = L.LSTM(16, return_sequences=True)(x)
    x = L.LSTM(16)(x)
    outputs = L.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


LATENT_DIM, ENCODER_TOKENS, DECODER_TOKENS = 16, 11, 13


def seq2seq_training() -> keras.Model:
    """keras.io "Character-level recurrent sequence-to-sequence model" (lstm_seq2seq): the training model,
    the decoder LSTM starting from the encoder's final `h, c`."""
    encoder_inputs = keras.Input(shape=(None, ENCODER_TOKENS))
    encoder = L.LSTM(LATENT_DIM, return_state=True)
    encoder_outputs, state_h, state_c = encoder(encoder_inputs)
    encoder_states = [state_h, state_c]
    decoder_inputs = keras.Input(shape=(None, DECODER_TOKENS))
    decoder_lstm = L.LSTM(LATENT_DIM, return_sequences=True, return_state=True)
    decoder_outputs, _, _ = decoder_lstm(decoder_inputs, initial_state=encoder_states)
    decoder_dense = L.Dense(DECODER_TOKENS, activation="softmax")
    decoder_outputs = decoder_dense(decoder_outputs)
    return keras.Model([encoder_inputs, decoder_inputs], decoder_outputs)


def seq2seq_encoder(model: keras.Model | None = None) -> keras.Model:
    """lstm_seq2seq's inference encoder, built by hand from the trained model's layers: the encoder's
    final states."""
    model = model or seq2seq_training()
    encoder_inputs = model.input[0]
    encoder_outputs, state_h_enc, state_c_enc = model.layers[2].output
    return keras.Model(encoder_inputs, [state_h_enc, state_c_enc])


def seq2seq_decoder(model: keras.Model | None = None) -> keras.Model:
    """lstm_seq2seq's inference decoder, built by hand from the trained model's layers: the decoder
    LSTM from state inputs, returning its softmax and its new `h, c`."""
    model = model or seq2seq_training()
    decoder_inputs = model.input[1]
    decoder_state_input_h = keras.Input(shape=(LATENT_DIM,))
    decoder_state_input_c = keras.Input(shape=(LATENT_DIM,))
    decoder_states_inputs = [decoder_state_input_h, decoder_state_input_c]
    decoder_lstm = model.layers[3]
    decoder_outputs, state_h_dec, state_c_dec = decoder_lstm(decoder_inputs, initial_state=decoder_states_inputs)
    decoder_states = [state_h_dec, state_c_dec]
    decoder_dense = model.layers[4]
    decoder_outputs = decoder_dense(decoder_outputs)
    return keras.Model([decoder_inputs] + decoder_states_inputs, [decoder_outputs] + decoder_states)


def forecast_lstm() -> keras.Model:
    """TensorFlow tutorial "Time series forecasting": `lstm_model`, an output at every step."""
    return keras.Sequential([keras.Input((None, 19)), L.LSTM(32, return_sequences=True), L.Dense(units=1)])


@keras.saving.register_keras_serializable(package="seqexport_examples")
class TokenAndPositionEmbedding(L.Layer):
    """keras.io "Text generation with a miniature GPT": token and learned position embeddings (the
    example's layers take no `**kwargs`, so Keras cannot load them back; this one can)."""

    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.maxlen, self.vocab_size, self.embed_dim = maxlen, vocab_size, embed_dim
        self.token_emb = L.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = L.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = keras.ops.shape(x)[-1]
        positions = keras.ops.arange(0, maxlen, 1)
        return self.token_emb(x) + self.pos_emb(positions)

    def get_config(self):
        return {**super().get_config(), "maxlen": self.maxlen, "vocab_size": self.vocab_size,
                "embed_dim": self.embed_dim}


@keras.saving.register_keras_serializable(package="seqexport_examples")
class CausalTransformerBlock(L.Layer):
    """The miniature GPT's `TransformerBlock`: causal self-attention, then a feed-forward network."""

    def __init__(self, embed_dim, num_heads, ff_dim, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.num_heads, self.ff_dim = embed_dim, num_heads, ff_dim
        self.att = L.MultiHeadAttention(num_heads, embed_dim)
        self.ffn = keras.Sequential([L.Dense(ff_dim, activation="relu"), L.Dense(embed_dim)])
        self.layernorm1 = L.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = L.LayerNormalization(epsilon=1e-6)

    def call(self, inputs):
        attention_output = self.att(inputs, inputs, use_causal_mask=True)
        out1 = self.layernorm1(inputs + attention_output)
        return self.layernorm2(out1 + self.ffn(out1))

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "ff_dim": self.ff_dim}


def miniature_gpt() -> keras.Model:
    """keras.io "Text generation with a miniature GPT" (its loadable variant): token ids of a fixed length
    into token and position embeddings, a causal transformer block, logits over the vocabulary."""
    inputs = keras.Input(shape=(16,), dtype="int32")
    x = TokenAndPositionEmbedding(16, 50, 16)(inputs)
    x = CausalTransformerBlock(16, 2, 16)(x)
    outputs = L.Dense(50)(x)
    return keras.Model(inputs=inputs, outputs=[outputs, x])


def causal_attention_mask(batch_size, n_dest, n_src, dtype):
    """The miniature GPT's mask: ones in the lower triangle, counting from the lower right corner (broadcast to
    the batch where the example tiles it: Keras 3.15's `ops.tile` takes no symbolic repeats)."""
    i = keras.ops.arange(n_dest)[:, None]
    j = keras.ops.arange(n_src)
    mask = keras.ops.reshape(keras.ops.cast(i >= j - n_src + n_dest, dtype), [1, n_dest, n_src])
    return keras.ops.broadcast_to(mask, keras.ops.stack([batch_size, n_dest, n_src]))


@keras.saving.register_keras_serializable(package="seqexport_examples")
class TransformerBlock(L.Layer):
    """The miniature GPT's `TransformerBlock` as the example writes it: the causal mask built by
    `causal_attention_mask` and given as `attention_mask=`, dropout, post-norm residuals."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.num_heads, self.ff_dim, self.rate = embed_dim, num_heads, ff_dim, rate
        self.att = L.MultiHeadAttention(num_heads, embed_dim)
        self.ffn = keras.Sequential([L.Dense(ff_dim, activation="relu"), L.Dense(embed_dim)])
        self.layernorm1 = L.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = L.LayerNormalization(epsilon=1e-6)
        self.dropout1 = L.Dropout(rate)
        self.dropout2 = L.Dropout(rate)

    def call(self, inputs):
        input_shape = keras.ops.shape(inputs)
        batch_size, seq_len = input_shape[0], input_shape[1]
        causal_mask = causal_attention_mask(batch_size, seq_len, seq_len, "bool")
        attention_output = self.dropout1(self.att(inputs, inputs, attention_mask=causal_mask))
        out1 = self.layernorm1(inputs + attention_output)
        return self.layernorm2(out1 + self.dropout2(self.ffn(out1)))

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "ff_dim": self.ff_dim, "rate": self.rate}


def gpt_two_blocks(maxlen: int = 16) -> keras.Model:
    """keras.io "Text generation with a miniature GPT" with two of its `TransformerBlock`s: learned positions,
    logits and the last block's output, as the example returns them."""
    inputs = keras.Input(shape=(maxlen,), dtype="int32")
    x = TokenAndPositionEmbedding(maxlen, 50, 16)(inputs)
    x = TransformerBlock(16, 2, 16)(x)
    x = TransformerBlock(16, 2, 16)(x)
    outputs = L.Dense(50)(x)
    return keras.Model(inputs=inputs, outputs=[outputs, x])


@keras.saving.register_keras_serializable(package="seqexport_examples")
class SinusoidalPosition(L.Layer):
    """Adds the sinusoidal position encoding of "Attention is all you need" over `ops.arange(T)`."""

    def call(self, x):
        steps, dim = keras.ops.shape(x)[1], x.shape[-1]
        positions = keras.ops.cast(keras.ops.arange(steps), x.dtype)[:, None]
        rates = keras.ops.exp(keras.ops.arange(0, dim, 2, dtype=x.dtype) * (-9.2 / dim))[None, :]
        angles = positions * rates
        encoding = keras.ops.reshape(keras.ops.stack([keras.ops.sin(angles), keras.ops.cos(angles)], -1),
                                     [steps, dim])
        return x + encoding


def prenorm_gpt() -> keras.Model:
    """A pre-norm decoder block in functional form (GPT-2's layout): residuals around causal self-attention
    and the feed-forward network, sinusoidal positions, any length (the cache's set by --max-length)."""
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = SinusoidalPosition()(L.Embedding(40, 16)(inputs))
    h = L.LayerNormalization(epsilon=1e-5)(x)
    x = L.Add()([x, L.MultiHeadAttention(4, 4)(h, h, use_causal_mask=True)])
    h = L.LayerNormalization(epsilon=1e-5)(x)
    x = L.Add()([x, L.Dense(16)(L.Dense(32, activation="gelu")(h))])
    return keras.Model(inputs, L.Dense(40)(L.LayerNormalization(epsilon=1e-5)(x)))


def lstm_causal_attention() -> keras.Model:
    """An LSTM then causal self-attention over its outputs (`mha(h, h, use_causal_mask=True)`), a residual
    and a per-step head: float features of any length."""
    inputs = keras.Input(shape=(None, 6))
    h = L.LSTM(12, return_sequences=True)(inputs)
    attended = L.MultiHeadAttention(2, 6)(h, h, use_causal_mask=True)
    return keras.Model(inputs, L.Dense(3)(L.Add()([h, attended])))


def lstm_causal_attention_float16() -> keras.Model:
    """`lstm_causal_attention` under Keras's `mixed_float16` policy (float32 logits, as the mixed-precision
    guide advises)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input(shape=(None, 6))
        h = L.LSTM(12, return_sequences=True)(inputs)
        attended = L.MultiHeadAttention(2, 6)(h, h, use_causal_mask=True)
        return keras.Model(inputs, L.Dense(3, dtype="float32")(L.Add()([h, attended])))
    finally:
        keras.config.set_dtype_policy(previous)


def build(name: str) -> keras.Model:
    """The example `name`, seeded, with nonzero biases (a bias that does not come over is noticed)."""
    keras.utils.set_random_seed(11)
    model = globals()[name]()
    for variable in model.trainable_variables:
        if "bias" in variable.path:
            variable.assign(keras.random.normal(variable.shape, stddev=0.3, seed=5))
    return model


def bidirectional_imdb() -> keras.Model:
    """keras.io "Bidirectional LSTM on IMDB": token ids of any length, `Embedding(20000, 128)`, two
    `Bidirectional(LSTM(64))`, a sigmoid."""
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = L.Embedding(100, 16)(inputs)
    x = L.Bidirectional(L.LSTM(16, return_sequences=True))(x)
    x = L.Bidirectional(L.LSTM(16))(x)
    outputs = L.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def addition_rnn() -> keras.Model:
    """keras.io "Sequence to sequence learning for performing number addition": an LSTM encoder, its
    last step repeated by `RepeatVector` for the LSTM decoder, a softmax per output digit."""
    return keras.Sequential([keras.Input((7, 12)), L.LSTM(32), L.RepeatVector(4), L.LSTM(32, return_sequences=True),
                             L.Dense(12, activation="softmax")])


def fcn_classifier() -> keras.Model:
    """keras.io "Timeseries classification from scratch": three `Conv1D(padding="same")` blocks with
    batch normalization, global average pooling, a softmax."""
    input_layer = keras.Input((None, 1))
    x = input_layer
    for _ in range(3):
        x = L.Conv1D(filters=8, kernel_size=3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
    gap = L.GlobalAveragePooling1D()(x)
    return keras.Model(input_layer, L.Dense(2, activation="softmax")(gap))


def transformer_classifier() -> keras.Model:
    """keras.io "Timeseries classification with a Transformer model": encoder blocks of
    `MultiHeadAttention` and `Conv1D(kernel_size=1)` with residuals, pooled over time."""
    inputs = keras.Input(shape=(20, 1))
    x = inputs
    for _ in range(2):
        attended = L.MultiHeadAttention(key_dim=8, num_heads=2, dropout=0.25)(x, x)
        attended = L.Dropout(0.25)(attended)
        res = L.LayerNormalization(epsilon=1e-6)(attended + x)
        y = L.Conv1D(filters=4, kernel_size=1, activation="relu")(res)
        y = L.Dropout(0.25)(y)
        y = L.Conv1D(filters=1, kernel_size=1)(y)
        x = L.LayerNormalization(epsilon=1e-6)(y + res)
    x = L.GlobalAveragePooling1D(data_format="channels_last")(x)
    x = L.Dense(16, activation="relu")(x)
    return keras.Model(inputs, L.Dense(2, activation="softmax")(x))


def conv_lstm_next_frame() -> keras.Model:
    """keras.io "Next-frame prediction with Conv-LSTM": `ConvLSTM2D` layers over frames, a
    `Conv3D(padding="same")` over time and space, sigmoid frames out."""
    inputs = keras.Input(shape=(None, 8, 8, 1))
    x = L.ConvLSTM2D(filters=4, kernel_size=(3, 3), padding="same", return_sequences=True, activation="relu")(inputs)
    x = L.BatchNormalization()(x)
    x = L.ConvLSTM2D(filters=4, kernel_size=(1, 1), padding="same", return_sequences=True, activation="relu")(x)
    x = L.Conv3D(filters=1, kernel_size=(3, 3, 3), activation="sigmoid", padding="same")(x)
    return keras.Model(inputs, x)


def conv1d_forecaster() -> keras.Model:
    """TensorFlow tutorial "Time series forecasting": `conv_model`, a `Conv1D(kernel_size=3)` over a
    window of 3 steps (padding "valid"), a Dense per output step."""
    return keras.Sequential([keras.Input((3, 19)), L.Conv1D(filters=32, kernel_size=3, activation="relu"),
                             L.Dense(units=32, activation="relu"), L.Dense(units=1)])


class MyModel(keras.Model):
    """TensorFlow tutorial "Text generation with an RNN": a subclassed GRU model over character ids,
    its `call` threading the GRU's state when asked (no `get_config`: Keras cannot save it)."""

    def __init__(self, vocab_size, embedding_dim, rnn_units):
        super().__init__()
        self.embedding = L.Embedding(vocab_size, embedding_dim)
        self.gru = L.GRU(rnn_units, return_sequences=True, return_state=True)
        self.dense = L.Dense(vocab_size)

    def call(self, inputs, states=None, return_state=False, training=False):
        x = inputs
        x = self.embedding(x, training=training)
        if states is None:
            states = self.gru.get_initial_state(keras.ops.shape(x)[0])
        x, states = self.gru(x, initial_state=states, training=training)
        x = self.dense(x, training=training)
        if return_state:
            return x, states
        return x


def text_generation_gru() -> keras.Model:
    """The tutorial's `MyModel`, called once on a batch of ids (as the tutorial does before training)."""
    model = MyModel(vocab_size=30, embedding_dim=8, rnn_units=16)
    model(keras.ops.zeros((2, 7), dtype="int32"))
    return model


class ResidualWrapper(keras.Model):
    """TensorFlow tutorial "Time series forecasting": a model's output added to its input."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def call(self, inputs, *args, **kwargs):
        delta = self.model(inputs, *args, **kwargs)
        return inputs + delta


def residual_lstm() -> keras.Model:
    """The tutorial's `residual_lstm`: `ResidualWrapper` around an LSTM and a Dense, called once."""
    model = ResidualWrapper(keras.Sequential([L.LSTM(16, return_sequences=True), L.Dense(5)]))
    model(keras.ops.zeros((2, 7, 5)))
    return model


class FeedBack(keras.Model):
    """TensorFlow tutorial "Time series forecasting": the autoregressive LSTM, its predictions fed back
    as its next inputs for `out_steps` steps (a Python loop over time)."""

    def __init__(self, units, out_steps, num_features):
        super().__init__()
        self.out_steps = out_steps
        self.units = units
        self.lstm_cell = L.LSTMCell(units)
        self.lstm_rnn = L.RNN(self.lstm_cell, return_state=True)
        self.dense = L.Dense(num_features)

    def warmup(self, inputs):
        x, *state = self.lstm_rnn(inputs)
        prediction = self.dense(x)
        return prediction, state

    def call(self, inputs, training=None):
        predictions = []
        prediction, state = self.warmup(inputs)
        predictions.append(prediction)
        for _ in range(1, self.out_steps):
            x = prediction
            x, state = self.lstm_cell(x, states=state, training=training)
            prediction = self.dense(x)
            predictions.append(prediction)
        predictions = keras.ops.stack(predictions)
        return keras.ops.transpose(predictions, [1, 0, 2])


def feedback_forecaster() -> keras.Model:
    """The tutorial's `feedback_model`, called once on a window of inputs."""
    model = FeedBack(units=16, out_steps=4, num_features=5)
    model(keras.ops.zeros((2, 6, 5)))
    return model


REVIEWS = ["the movie was great", "a terrible and boring film", "i loved the acting", "the plot made no sense",
           "great film great cast", "boring"]


def text_classifier() -> keras.Model:
    """TensorFlow tutorial "Text classification with an RNN": `TextVectorization` on raw strings, an
    `Embedding(mask_zero=True)`, `Bidirectional(LSTM)`, two Dense layers."""
    encoder = L.TextVectorization(max_tokens=40)
    encoder.adapt(REVIEWS)
    inputs = keras.Input(shape=(1,), dtype="string")
    x = encoder(inputs)
    x = L.Embedding(input_dim=len(encoder.get_vocabulary()), output_dim=8, mask_zero=True)(x)
    x = L.Bidirectional(L.LSTM(8))(x)
    x = L.Dense(8, activation="relu")(x)
    return keras.Model(inputs, L.Dense(1)(x))


def token_tagger() -> keras.Model:
    """Tokens as strings `[B, T]` (the Keras preprocessing-layers guide: the lookup inside the model, so the
    served model takes the strings): `StringLookup` adapted on words, an `Embedding`, an LSTM, a softmax per
    token."""
    lookup = L.StringLookup(name="word_lookup")
    lookup.adapt(np.array(" ".join(REVIEWS).split()))
    tokens = keras.Input(shape=(None,), dtype="string", name="tokens")
    x = L.Embedding(lookup.vocabulary_size(), 8)(lookup(tokens))
    x = L.LSTM(8, return_sequences=True)(x)
    return keras.Model(tokens, L.Dense(3, activation="softmax")(x))


def speech_ctc() -> keras.Model:
    """keras.io "Automatic Speech Recognition using CTC" (DeepSpeech2-like): a spectrogram, `Conv2D` over
    time and frequency, `Bidirectional(GRU)`, a softmax per frame over the characters."""
    input_spectrogram = keras.Input((None, 16), name="input")
    x = L.Reshape((-1, 16, 1))(input_spectrogram)
    x = L.Conv2D(filters=4, kernel_size=[11, 5], strides=[1, 2], padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.Reshape((-1, x.shape[-2] * x.shape[-1]))(x)
    x = L.Bidirectional(L.GRU(units=8, return_sequences=True, reset_after=True))(x)
    x = L.Dense(units=16, activation="relu")(x)
    return keras.Model(input_spectrogram, L.Dense(units=12, activation="softmax")(x))


# --- encoder-decoders: the encoder's result starts the decoder (exporter/context.py) -----------------

SOURCE_VOCAB, TARGET_VOCAB, SOURCE_STEPS = 30, 24, 9


def gru_translator() -> keras.Model:
    """A word-level GRU encoder-decoder as keras.io's "English-to-Spanish translation" data feeds one:
    source ids padded with 0 to a fixed length (`Embedding(mask_zero=True)`), the encoder GRU's final
    state the decoder GRU's `initial_state`, target ids of any length (teacher forcing)."""
    source = keras.Input((SOURCE_STEPS,), dtype="int32", name="source")
    target = keras.Input((None,), dtype="int32", name="target")
    encoded = L.GRU(16)(L.Embedding(SOURCE_VOCAB, 8, mask_zero=True)(source))
    decoded = L.GRU(16, return_sequences=True)(L.Embedding(TARGET_VOCAB, 8)(target), initial_state=encoded)
    return keras.Model([source, target], L.Dense(TARGET_VOCAB)(decoded))


def bidirectional_gru_translator() -> keras.Model:
    """The TensorFlow "NMT with attention" tutorial's encoder without its attention: a `Bidirectional`
    GRU over masked source ids, its forward and backward final states concatenated to start a GRU
    decoder of twice the units over masked target ids."""
    source = keras.Input((None,), dtype="int32", name="source")
    target = keras.Input((None,), dtype="int32", name="target")
    embedded = L.Embedding(SOURCE_VOCAB, 8, mask_zero=True)(source)
    _, forward, backward = L.Bidirectional(L.GRU(8, return_state=True))(embedded)
    state = L.Concatenate()([forward, backward])
    decoded = L.GRU(16, return_sequences=True)(L.Embedding(TARGET_VOCAB, 8, mask_zero=True)(target),
                                               initial_state=state)
    return keras.Model([source, target], L.Dense(TARGET_VOCAB, activation="softmax")(decoded))


def context_every_step() -> keras.Model:
    """Not an encoder-decoder seqexport streams: the source's summary is repeated and concatenated to
    every decoder step (`RepeatVector`, as keras.io's `addition_rnn` does), not given as a state."""
    source = keras.Input((None, 4), name="source")
    target = keras.Input((6, 3), name="target")
    summary = L.RepeatVector(6)(L.LSTM(8)(source))
    decoded = L.LSTM(8, return_sequences=True)(L.Concatenate()([target, summary]))
    return keras.Model([source, target], L.Dense(2)(decoded))


def luong_attention_translator() -> keras.Model:
    """A GRU encoder-decoder with Luong attention (`Attention`, `use_scale=True`) from each decoder step
    over the encoder's outputs of a padded source (its mask honoured), the context vector concatenated
    to the decoder's output before the softmax layer."""
    source = keras.Input((SOURCE_STEPS,), dtype="int32", name="source")
    target = keras.Input((None,), dtype="int32", name="target")
    memory, state = L.GRU(16, return_sequences=True, return_state=True)(
        L.Embedding(SOURCE_VOCAB, 8, mask_zero=True)(source))
    decoded = L.GRU(16, return_sequences=True)(L.Embedding(TARGET_VOCAB, 8)(target), initial_state=state)
    context = L.Attention(use_scale=True)([decoded, memory])
    return keras.Model([source, target], L.Dense(TARGET_VOCAB)(L.Concatenate()([decoded, context])))


def bahdanau_translator() -> keras.Model:
    """The TensorFlow "NMT with attention" tutorial's shape: a `Bidirectional` GRU encoder over padded
    source ids (`merge_mode="sum"`), a GRU decoder, and Bahdanau attention (`AdditiveAttention`) from
    each decoder step over the encoder's outputs, then `Concatenate` and a `Dense(tanh)` and the logits."""
    source = keras.Input((SOURCE_STEPS,), dtype="int32", name="source")
    target = keras.Input((None,), dtype="int32", name="target")
    memory = L.Bidirectional(L.GRU(16, return_sequences=True), merge_mode="sum")(
        L.Embedding(SOURCE_VOCAB, 8, mask_zero=True)(source))
    decoded = L.GRU(16, return_sequences=True)(L.Embedding(TARGET_VOCAB, 8)(target))
    context = L.AdditiveAttention()([decoded, memory])
    attended = L.Dense(16, activation="tanh", use_bias=False)(L.Concatenate()([context, decoded]))
    return keras.Model([source, target], L.Dense(TARGET_VOCAB)(attended))


def cross_attention_translator() -> keras.Model:
    """The NMT tutorial's current `CrossAttention`: `MultiHeadAttention(query=decoder, value=memory)`, then
    `Add` and `LayerNormalization`, over an LSTM encoder's outputs that also start the LSTM decoder."""
    source = keras.Input((SOURCE_STEPS,), dtype="int32", name="source")
    target = keras.Input((None,), dtype="int32", name="target")
    memory, h, c = L.LSTM(16, return_sequences=True, return_state=True)(
        L.Embedding(SOURCE_VOCAB, 8, mask_zero=True)(source))
    decoded = L.LSTM(16, return_sequences=True)(L.Embedding(TARGET_VOCAB, 8)(target), initial_state=[h, c])
    attended = L.MultiHeadAttention(num_heads=2, key_dim=8)(query=decoded, value=memory)
    normed = L.LayerNormalization()(L.Add()([decoded, attended]))
    return keras.Model([source, target], L.Dense(TARGET_VOCAB)(normed))


# Embeddings of the scale training gives them (Keras starts them within +-0.05, where the next id hardly
# depends on the last one and a generator that feeds back the wrong id would go unnoticed).
_TRAINED = keras.initializers.RandomNormal(stddev=1.5)


def character_lstm_ids() -> keras.Model:
    """keras.io "Character-level text generation with LSTM" with character ids into an `Embedding` instead of
    one-hot vectors (as the TensorFlow text-generation tutorial feeds its model): LSTM, then a softmax over
    the characters (15 here)."""
    return keras.Sequential([keras.Input(shape=(None,), dtype="int32"), L.Embedding(15, 8, embeddings_initializer=_TRAINED),
                             L.LSTM(16), L.Dense(15, activation="softmax")])


def word_gru_logits() -> keras.Model:
    """TensorFlow tutorial "Text generation with an RNN" written functional: ids into `Embedding(vocab_size,
    embedding_dim)`, `GRU(rnn_units, return_sequences=True)`, `Dense(vocab_size)` logits (30 words here)."""
    inputs = keras.Input(shape=(None,), dtype="int32", name="ids")
    x = L.Embedding(30, 8, embeddings_initializer=_TRAINED)(inputs)
    x = L.GRU(16, return_sequences=True)(x)
    return keras.Model(inputs, L.Dense(30)(x))


def feedback_lstm() -> keras.Model:
    """TensorFlow tutorial "Time series forecasting", the `FeedBack` model's step as a functional model: its
    LSTM over a window of 5 features and its `Dense(num_features)` per step; `generate` feeds each prediction
    back as the next input, as `FeedBack.call` does."""
    inputs = keras.Input(shape=(None, 5), name="window")
    x = L.LSTM(16, return_sequences=True)(inputs)
    return keras.Model(inputs, L.Dense(5)(x))


def mismatched_vocab_gru() -> keras.Model:
    """An id model whose output does not range over its input ids (40 scores, 30 ids): no `generate`."""
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = L.GRU(8, return_sequences=True)(L.Embedding(30, 4)(inputs))
    return keras.Model(inputs, L.Dense(40, activation="softmax")(x))
