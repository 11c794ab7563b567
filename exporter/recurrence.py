"""Whole-sequence runs of SimpleRNN and GRU cells, with a gradient written by hand.

Why: in a `tf.while_loop` every op of every step pays TF's graph executor, and at
the sizes people stream (B <= 32, a few hundred units) that overhead is most of the
time. So, per layer:

- the input projection `x @ W + b` leaves the step: for a SimpleRNN ONE matrix
  product of the whole chunk before the loop, for a GRU one per block of `UNROLL`
  steps inside the loop (its `[T, B, 3U]` result would otherwise be written to memory
  and read back, and held: most of the forward's peak memory); each step keeps only
  `h @ U` and the gates' element-wise maths;
- the loop runs `UNROLL` steps per iteration (the loop's own bookkeeping, a few ops
  per loop variable per iteration, is paid once per block); a forward loop pads T to
  whole blocks (`state_scan`), a backward one runs the `T mod UNROLL` steps left in a
  second loop (`scan`); an iteration slices its block of the inputs (a view);
- everything is time-major (`[T, B, ...]`): the caller (exporter/keras_step.py)
  transposes a model's input once, not each layer's;
- a layer whose step product is wide (`SPLIT_MIN_COLUMNS`) runs as two batch halves
  at once (`in_halves`), one per core: the caller splits the batch once around every
  run of such layers and the row-wise layers between and after them;
- consecutive SimpleRNN layers share one loop, a wavefront of blocks
  (`simple_rnn_stack_sequence`);
- the gradient (`tf.custom_gradient`) recomputes the gates of every step at once
  from the saved outputs (one matrix product), runs one backward loop whose steps
  are a matrix product and a few element-wise ops, and computes the weight gradients
  as one matrix product each after that loop;
- a GRU with `reset_after=False` steps with TF's `GRUBlockCell` instead, one op per step
  with its input product inside (GRU(128), B=32: 7-11% faster than its input product per
  block and 11 ops per step); TF has no gradient for that op, so the hand-written gradient
  reads that loop's outputs through `differentiable_as` (below).

Used for `serving_default` and `stream` like the fused LSTM (exporter/fused.py):
`step` keeps the Keras cell and the while_loop stays as the `_unfused` twins.

Second derivatives go through the default signatures too, after a reload in a fresh process:
a hand-written gradient is made of ops TF can differentiate (no `tf.custom_gradient` inside
one: SavedModel saves the custom gradients of a function's own ops, not those of the ops
inside a gradient function, and a fresh process then fails with "No gradient defined for
operation 'IdentityN'"), and what it reads of a kernel TF cannot differentiate (`BlockLSTM`,
whose registered gradient drops the gates' gradients, `GRUBlockCell`, which has none) it reads
through `differentiable_as`, whose derivative is a plain-TF twin's.
The maths is the Keras cell's (`keras.layers.SimpleRNNCell`, `GRUCell` with either
`reset_after`), reordered: e.g. `z * h + (1 - z) * n` is computed as `n + z * (h - n)`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

# Steps per loop iteration. GRU(128), B=32, T=128, interleaved on a loaded 2-core machine:
# forward 187 / 121 / 138 / 109 µs/step and gradient 497 / 326 / 375 / 405 for 1 / 4 / 8 / 16.
UNROLL = 8
# Steps per iteration of the backward loops of the hand-written gradients (`scan(reverse=True)`):
# fewer than forwards, because second derivatives differentiate these loops and TF builds that
# graph in time that grows with the body (a reloaded GRU(8)'s first second derivative: 6-7 s
# at 4, 11-13 s at 8). First derivatives, interleaved medians of 15, ms per call, 4 vs 8:
# B=32 T=128 GRU(128) 23.4/24.1, LSTM(128) 24.0/22.2; B=1 T=256 GRU 6.5/6.5, LSTM 6.8/6.9.
# The SimpleRNN's backward keeps `UNROLL` (B=1 T=256: 3.8 at 8, 4.4 at 4).
BACKWARD_UNROLL = 4

# A layer runs as two batch halves at once (`in_halves`) when its step's recurrent product is
# at least this wide (gates x units). B=32, T=128/1024, interleaved on a quiet 2-core machine,
# ratio to Keras: GRU(128) (384 columns) 0.72/0.64 in one loop, 0.53/0.47 in halves;
# 2 x SimpleRNN(64) (64 columns) 0.58/0.58 in one loop, 0.74/0.55 in halves (its steps are too
# small to share). The halves need the second core free: on a loaded machine they gain little.
SPLIT_MIN_COLUMNS = 256


def is_hoistable_simple_rnn(cell) -> bool:
    """A Keras `SimpleRNNCell` with tanh in float32."""
    import keras

    return (type(cell) is keras.layers.SimpleRNNCell and cell.activation is keras.activations.tanh
            and _float32(cell))


def is_hoistable_gru(cell) -> bool:
    """A Keras `GRUCell` (either `reset_after`) with tanh/sigmoid in float32."""
    import keras

    return (type(cell) is keras.layers.GRUCell and cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid and _float32(cell))


def _float32(cell) -> bool:
    return cell.compute_dtype == "float32" and cell.variable_dtype == "float32"


def _stack(ta, width: int, batch, steps_per_element: int):
    """A TensorArray of `[steps_per_element, B, width]` (or `[B, width]`) elements as `[n, B, width]`.

    Stacked with the element shape known at run time: stacking an empty list (T = 0)
    fails on a partly unknown one, and so does one never written (B = 0: its elements
    are empty, and stack as such).
    """
    import tensorflow as tf

    shape = [batch, width] if steps_per_element == 1 else [steps_per_element, batch, width]
    if tf.executing_eagerly():
        stacked = ta.stack() if ta.size() > 0 and batch > 0 else tf.zeros([ta.size(), *shape], ta.dtype)
    else:
        stacked = tf.raw_ops.TensorListStack(input_handle=ta.flow, element_shape=tf.stack(shape),
                                             element_dtype=ta.dtype, num_elements=-1)
    return tf.reshape(stacked, tf.stack([tf.shape(stacked)[0] * steps_per_element, batch, width]))


def _loop(step: Callable, sequences: tuple, carry: tuple, widths: tuple, unroll: int, reverse: bool,
          project: Callable | None):
    """`(outputs_t, carry) = step(inputs_t, carry)` over time-major `sequences` ([n * unroll, B, w] each),
    `unroll` steps per iteration, from the last step to the first if `reverse`.
    Returns (outputs, each [n * unroll, B, w] in time order, final carry).

    Each iteration slices its block out of the sequences (a slice along time is a view,
    not a copy: no TensorArray of the inputs, which would copy them all first), and a
    reverse loop walks the blocks backwards (no reversed copies of inputs and outputs).
    """
    import tensorflow as tf

    dtype = sequences[0].dtype
    batch = tf.shape(sequences[0])[1]
    blocks = tf.shape(sequences[0])[0] // unroll
    # An empty batch (the empty half of a split batch at B = 1) runs no iteration at all.
    iterations = tf.where(batch > 0, blocks, 0)
    element = lambda w: tf.TensorShape([None, w] if unroll == 1 else [unroll, None, w])  # noqa: E731
    outputs = [tf.TensorArray(dtype, size=blocks, element_shape=element(w)) for w in widths]
    carry_shapes = [c.shape for c in carry]

    def body(n, *loop_vars):
        tas, state = loop_vars[: len(widths)], tuple(loop_vars[len(widths):])
        block = blocks - 1 - n if reverse else n
        reads = tuple(seq[block * unroll:(block + 1) * unroll] for seq in sequences)
        for read, seq in zip(reads, sequences):
            read.set_shape([unroll, *seq.shape[1:]])  # whole blocks only: `project` may rely on it
        if project is not None:
            reads = project(reads)
        reads = [(r[0],) if unroll == 1 else tf.unstack(r, num=unroll) for r in reads]
        per_step = [None] * unroll
        for j in reversed(range(unroll)) if reverse else range(unroll):
            per_step[j], state = step(tuple(r[j] for r in reads), state)
        for tensor, shape in zip(state, carry_shapes):
            tensor.set_shape(shape)
        written = [ta.write(block, tf.stack([y[k] for y in per_step]) if unroll > 1 else per_step[0][k])
                   for k, ta in enumerate(tas)]
        return (n + 1, *written, *state)

    _, *result = tf.while_loop(lambda n, *_: n < iterations, body, (tf.constant(0), *outputs, *carry))
    tas, final = result[: len(widths)], tuple(result[len(widths):])
    return [_stack(ta, w, batch, unroll) for ta, w in zip(tas, widths)], final


def scan(step: Callable, sequences: tuple, carry: tuple, widths: tuple, *, reverse: bool = False,
         unroll: int | None = None, project: Callable | None = None):
    """`(outputs_t, carry) = step(inputs_t, carry)` over time-major `sequences` ([T, B, w] each).

    Args:
        step: `(tuple of [B, w] inputs, carry) -> (tuple of [B, w] outputs, carry)`.
        sequences: the inputs, time-major.
        carry: the initial carry, a tuple of `[B, w]` tensors.
        widths: the last dimension of each output.
        reverse: run from the last step to the first (outputs still in time order).
        unroll: steps per loop iteration (default: `UNROLL` forwards, `BACKWARD_UNROLL` in reverse).
        project: `(tuple of [k, B, w] blocks of sequences) -> tuple of [k, B, w'] step inputs`, run
            once per iteration (k = unroll or 1): e.g. the input product of a block, which then
            comes from cache instead of a whole-sequence `[T, B, w']` tensor in memory.

    Returns:
        (outputs, a list of `[T, B, w]`, the final carry).
    """
    import tensorflow as tf

    if unroll is None:
        unroll = BACKWARD_UNROLL if reverse else UNROLL
    if unroll == 1:  # one loop does it all
        return _loop(step, sequences, carry, widths, 1, reverse, project)
    steps = tf.shape(sequences[0])[0]
    # The `T mod unroll` steps left over run one step per iteration, last (at the end of
    # time forwards, at its start backwards).
    split = steps - steps % unroll if not reverse else steps % unroll
    early, late = tuple(s[:split] for s in sequences), tuple(s[split:] for s in sequences)
    if reverse:
        late_out, carry = _loop(step, late, carry, widths, unroll, True, project)
        early_out, carry = _loop(step, early, carry, widths, 1, True, project)
    else:
        early_out, carry = _loop(step, early, carry, widths, unroll, False, project)
        late_out, carry = _loop(step, late, carry, widths, 1, False, project)
    return [tf.concat([a, b], axis=0) for a, b in zip(early_out, late_out)], carry


def state_scan(step: Callable, sequences: tuple, h0, width: int, *, unroll: int = UNROLL,
               project: Callable | None = None):
    """`h_t = step(inputs_t, h_{t-1})` over time-major `sequences` ([T, B, w] each), where the
    carry is the output (a forward SimpleRNN or GRU); returns (hs [T, B, width], h_T).

    One loop, no second one for the `T mod unroll` steps left over (`scan` runs one, and
    joins the two loops' outputs): the sequences are padded to whole blocks, the padded
    steps' outputs are dropped (a slice along time, a view), and h_T is read from the outputs
    (h0 when T = 0). A loop costs its setup at every call: GRU(128), B=32, T=128, this saved
    2-3 µs per step (0.50-0.52 of Keras against 0.53-0.54).
    """
    import tensorflow as tf

    steps = tf.shape(sequences[0])[0]
    padding = (steps + unroll - 1) // unroll * unroll - steps
    padded = tuple(tf.pad(s, [[0, padding]] + [[0, 0]] * (len(s.shape) - 1)) for s in sequences)

    def carried(inputs, state):
        h = step(inputs, state[0])
        return (h,), (h,)

    (hs,), _ = _loop(carried, padded, (h0,), (width,), unroll, False, project)
    hs = hs[:steps]
    return hs, last_or_initial(h0, hs)


def last_or_initial(initial, sequence):
    """The last step of a time-major `sequence`, or `initial` when it has no step (T = 0: an
    empty chunk leaves a stream where it was)."""
    import tensorflow as tf

    return tf.concat([initial[None], sequence[-1:]], axis=0)[-1]


def swap_batch_and_time(x):
    """`[B, T, ...]` as `[T, B, ...]`, or back."""
    import tensorflow as tf

    return tf.transpose(x, [1, 0, *range(2, len(x.shape))])


# Integer dtypes of a float's size: a transpose of the same bits (see `swap_batch_and_time_bits`).
_SAME_SIZE_INT = {"float16": "int16", "bfloat16": "int16", "float32": "int32", "float64": "int64"}


def swap_batch_and_time_bits(x):
    """`swap_batch_and_time` of a float tensor as a transpose of its bits (bitcast to an integer
    dtype of the same size and back), with the transpose back as its gradient.

    Why: TF's CPU build rewrites a float `Transpose` into oneDNN's `_MklTranspose`, whose own
    cost per call is large for the small tensors of a chunk; an integer one runs Eigen's.
    Measured in a `tf.function` (interleaved medians of 31): `[32, 128, 32]` 427 against 565 µs
    per call, `[32, 128, 8]` 364 against 482, `[32, 1024, 8]` equal. For the whole-sequence
    runs only: the while_loop twins, which LiteRT and tf2onnx read, keep the plain op.
    """
    import tensorflow as tf

    bits = _SAME_SIZE_INT.get(x.dtype.name)
    if bits is None:
        return swap_batch_and_time(x)

    @tf.custom_gradient
    def swapped(x):
        moved = tf.bitcast(swap_batch_and_time(tf.bitcast(x, bits)), x.dtype)
        # The gradient of a swap is the swap back, as the plain op: a gradient function made of
        # ops TF differentiates (a custom gradient inside one is lost from a SavedModel).
        return moved, swap_batch_and_time

    return swapped(x)


def matmul_seq(seq, matrix, transpose_b: bool = False):
    """`[T, B, k] @ [k, m]` (or `[m, k]` transposed) as one matrix product: `[T, B, m]`."""
    import tensorflow as tf

    flat = tf.reshape(seq, [-1, int(seq.shape[-1])])
    product = tf.matmul(flat, matrix, transpose_b=transpose_b)
    return tf.reshape(product, tf.concat([tf.shape(seq)[:2], tf.shape(product)[1:]], axis=0))


def block_product(block, matrix):
    """`[k, B, F] @ [F, m]` for a loop's block of k steps (k static): one matrix product, reshaped
    back with static sizes, no shape computed per iteration as `matmul_seq` does. In a loop's
    body only: `-1` cannot stand for an empty batch, and a loop runs no iteration on one."""
    import tensorflow as tf

    product = tf.reshape(block, [-1, int(block.shape[-1])]) @ matrix
    return tf.reshape(product, [int(block.shape[0]), -1, int(matrix.shape[-1])])


def outer_sum(a, b):
    """`sum_t a_t^T @ b_t` of two `[T, B, *]` sequences: one matrix product."""
    import tensorflow as tf

    return tf.matmul(tf.reshape(a, [-1, int(a.shape[-1])]), tf.reshape(b, [-1, int(b.shape[-1])]),
                     transpose_a=True)


def previous_steps(h0, hs):
    """`h_{t-1}` for every step: `[h0, h_0, ..., h_{T-2}]`."""
    import tensorflow as tf

    return tf.concat([h0[None], hs], axis=0)[: tf.shape(hs)[0]]


def dense_upstream(upstream, like):
    """The upstream gradient of an output nobody differentiated is None: zeros shaped like it."""
    import tensorflow as tf

    return tf.zeros_like(like) if upstream is None else tf.convert_to_tensor(upstream)


def simple_rnn_sequence(x_tm, h0, kernel, recurrent, bias):
    """`h_t = tanh(x_t @ W + b + h_{t-1} @ U)` over `x_tm [T, B, F]`; returns (hs [T, B, U], h_T)."""
    import tensorflow as tf

    @tf.custom_gradient
    def run(x_tm, h0, kernel, recurrent, bias):
        def forward(inputs, h):
            return tf.tanh(inputs[0] + h @ recurrent)

        # The input product as one whole-sequence product here: `[T, B, U]` is small next to a GRU's
        # `[T, B, 3U]`, and per block (as the GRU has it) it was slower at B=1 (0.20 -> 0.23 of Keras
        # at T=1024, no faster at B=32).
        hs, _ = state_scan(forward, (matmul_seq(x_tm, kernel) + bias,), h0, int(recurrent.shape[0]))
        # Second derivatives differentiate what the gradient reads: as a one-step loop, not this one.
        (hs,) = differentiable_as((hs,), (x_tm, h0, kernel, recurrent, bias), simple_rnn_twin)
        last = last_or_initial(h0, hs)

        def grad(d_hs, d_last):
            return simple_rnn_backward(x_tm, h0, hs, dense_upstream(d_hs, hs), dense_upstream(d_last, last),
                                       kernel, recurrent)

        return (hs, last), grad

    return run(x_tm, h0, kernel, recurrent, bias)


def simple_rnn_backward(x_tm, h0, hs, d_hs, d_last, kernel, recurrent):
    """The gradient of `simple_rnn_sequence` from its outputs `hs [T, B, U]` and the upstream
    gradients of `hs` and of `h_T`: (d_x, d_h0, d_kernel, d_recurrent, d_bias)."""
    import tensorflow as tf

    u_t = tf.transpose(recurrent)

    def backward(inputs, state):
        upstream, h_t = inputs
        # TanhGrad(y, dy) = dy * (1 - y^2): one op, and no slope sequence in memory.
        d_pre = tf.raw_ops.TanhGrad(y=h_t, dy=upstream + state[0])
        return (d_pre,), (d_pre @ u_t,)

    (d_pre,), (d_h0,) = scan(backward, (d_hs, hs), (d_last,), (int(recurrent.shape[0]),), reverse=True,
                             unroll=UNROLL)
    return (matmul_seq(d_pre, kernel, transpose_b=True), d_h0, outer_sum(x_tm, d_pre),
            outer_sum(previous_steps(h0, hs), d_pre), tf.reduce_sum(d_pre, axis=[0, 1]))


def simple_rnn_stack_sequence(x_tm, h0s: tuple, kernels: tuple, recurrents: tuple, biases: tuple):
    """N stacked tanh SimpleRNN layers over `x_tm [T, B, F]` as ONE loop, a wavefront of blocks;
    returns (the last layer's hs [T, B, U_N], (h_T of each layer)).

    Iteration n runs `UNROLL` steps of every layer: layer 1's block n, layer 2's block n - 1,
    ..., layer N's block n - N + 1. Layer i's inputs for its block are layer i - 1's outputs
    of the previous iteration, projected with one matrix product per block; each step is that
    layer's `h @ U`, an Add and a Tanh, as layer by layer. What one loop saves: the loop's
    bookkeeping, a remainder loop (T is padded to whole blocks) and the transposes between
    layers, paid once for the stack instead of once per layer; and the layers' steps within an
    iteration are independent, so the executor may run them at once. The first N - 1
    iterations fill the stack (layer i starts at iteration i - 1) and the last N - 1 drain it,
    each running only the layers that have a block; the steps that pad T to whole blocks are
    read by nothing kept.

    A wavefront of single steps (one `[h_1, ..., h_N] @ [[U_1, W_2, 0], [0, U_2, W_3], ...]`
    per step) had fewer ops per step but twice the recurrent products: 2 x SimpleRNN(64),
    B=32, T=1024, CPU time in one process on a loaded 2-core machine: 0.55 of Keras, against
    0.44 for these blocks and 0.50 layer by layer; faster at B=1 (0.12 against 0.18).

    Gradient: each layer's outputs are kept, so each layer's gradient is `simple_rnn_backward`
    from the top layer down, its inputs the outputs of the layer below (no forward recomputed).
    """
    import tensorflow as tf

    count = len(kernels)
    units = [int(r.shape[0]) for r in recurrents]
    unroll = UNROLL

    @tf.custom_gradient
    def run(x_tm, *weights):
        h0s, kernels, recurrents, biases = (weights[i * count:(i + 1) * count] for i in range(4))
        steps, batch = tf.shape(x_tm)[0], tf.shape(x_tm)[1]
        # At least N - 1 blocks, so that filling and draining (below) never overlap.
        blocks = tf.maximum((steps + unroll - 1) // unroll, count - 1)
        # Layer 1's input product over the whole chunk (as `simple_rnn_sequence`), padded to whole blocks.
        drive = tf.concat([matmul_seq(x_tm, kernels[0]) + biases[0],
                           tf.broadcast_to(biases[0], tf.stack([blocks * unroll - steps, batch, units[0]]))], axis=0)

        def iteration(n, active, state, below):
            """Layers `active` at iteration n (layer i: its block n - i); returns their blocks."""
            state, outputs = list(state), {}
            for i in active:
                if i == 0:
                    inputs = drive[n * unroll:(n + 1) * unroll]
                else:
                    inputs = matmul_seq(below[i - 1], kernels[i]) + biases[i]
                h, block = state[i], []
                for x_t in tf.unstack(inputs, num=unroll):
                    h = tf.tanh(x_t + h @ recurrents[i])
                    block.append(h)
                state[i], outputs[i] = h, tf.stack(block)
            below = [outputs.get(i, below[i]) for i in range(count - 1)]
            return state, below, outputs

        # Filling (iterations 0 .. N-2, layers 1 .. k+1) and draining (layers k+2 .. N, after the
        # loop) are written out: N is known, and no layer runs a block it does not need.
        state, below, pieces = list(h0s), [None] * (count - 1), [[] for _ in range(count)]
        for k in range(count - 1):
            state, below, outputs = iteration(k, range(k + 1), state, below)
            for i, block in outputs.items():
                pieces[i].append(block)
        shapes = [h.shape for h in state] + [b.shape for b in below]
        arrays = [tf.TensorArray(x_tm.dtype, size=blocks - count + 1, element_shape=tf.TensorShape([unroll, None, u]))
                  for u in units]

        def body(n, *loop_vars):
            arrays, carry = loop_vars[:count], loop_vars[count:]
            state, below, outputs = iteration(n, range(count), carry[:count], carry[count:])
            for tensor, shape in zip((*state, *below), shapes):
                tensor.set_shape(shape)
            written = [a.write(n - count + 1, outputs[i]) for i, a in enumerate(arrays)]
            return (n + 1, *written, *state, *below)

        result = tf.while_loop(lambda n, *_: n < blocks, body, (tf.constant(count - 1), *arrays, *state, *below))
        state, below = result[1 + count:1 + 2 * count], result[1 + 2 * count:]
        for i in range(count):
            pieces[i].append(_stack(result[1 + i], units[i], batch, unroll))
        for k in range(count - 1):
            state, below, outputs = iteration(blocks + k, range(k + 1, count), state, below)
            for i, block in outputs.items():
                pieces[i].append(block)
        hs = []
        for i in range(count):
            h = tf.concat(pieces[i], axis=0)[:steps]
            h.set_shape([None, None, units[i]])
            hs.append(h)
        hs = list(differentiable_as(tuple(hs), (x_tm, *weights), functools.partial(simple_rnn_stack_twin, count=count)))
        lasts = [last_or_initial(h0s[i], hs[i]) for i in range(count)]

        def grad(d_top, *d_lasts):
            grads = [None] * (4 * count)
            upstream = dense_upstream(d_top, hs[-1])
            for i in reversed(range(count)):
                inputs = x_tm if i == 0 else hs[i - 1]
                d_x, *layer_grads = simple_rnn_backward(inputs, h0s[i], hs[i], upstream,
                                                        dense_upstream(d_lasts[i], lasts[i]), kernels[i], recurrents[i])
                for k, g in enumerate(layer_grads):
                    grads[k * count + i] = g
                upstream = d_x
            return (upstream, *grads)

        return (hs[-1], *lasts), grad

    top, *lasts = run(x_tm, *h0s, *kernels, *recurrents, *biases)
    return top, tuple(lasts)


def gru_sequence(x_tm, h0, kernel, recurrent, bias, *, reset_after: bool):
    """Keras's GRU over `x_tm [T, B, F]`; returns (hs [T, B, U], h_T).

    `bias`: `[2, 3U]` (input and recurrent biases) when `reset_after`, else `[3U]`;
    gate blocks in Keras's order (z, r, h). Not `reset_after`: the forward loop steps with
    `GRUBlockCell` (its weights from `gru_block_cell_weights`), the gradient is this one's.
    """
    import tensorflow as tf

    units = int(recurrent.shape[0])
    # SigmoidGrad(y, dy) = dy * y * (1 - y), TanhGrad(y, dy) = dy * (1 - y^2): one pass over the
    # sequence each instead of three or four.
    sigmoid_grad, tanh_grad = tf.raw_ops.SigmoidGrad, tf.raw_ops.TanhGrad

    def folded_bias(bias):
        """Every bias of z and r, and the input bias of n: what the input product adds."""
        if reset_after:
            return bias[0] + tf.concat([bias[1][: 2 * units], tf.zeros([units], bias.dtype)], axis=0)
        return bias

    def projections(x_tm, kernel, folded):
        """(x_zr [T, B, 2U] with every bias of z and r, x_n [T, B, U] with the input bias of n)."""
        return tuple(tf.split(matmul_seq(x_tm, kernel) + folded, [2 * units, units], axis=-1))

    @tf.custom_gradient
    def run(x_tm, h0, kernel, recurrent, bias):
        u_zr, u_n = recurrent[:, : 2 * units], recurrent[:, 2 * units:]
        b_rn = bias[1][2 * units:] if reset_after else None
        folded = folded_bias(bias)  # once, outside the loop (not once per block)

        if reset_after:
            def forward(inputs, h):
                x_zr_t, x_n_t = inputs
                h_zr, h_n = tf.split(h @ recurrent, [2 * units, units], axis=-1)
                z, r = tf.split(tf.sigmoid(x_zr_t + h_zr), 2, axis=-1)
                n = tf.tanh(x_n_t + r * (h_n + b_rn))
                return n + z * (h - n)

            # The biases ride in the input product, as one more row of the kernel against a column
            # of ones: a block's input products are two matrix products, no Add and no Split over
            # the block (GRU(128): 2-7% faster at B=32 T=1024, 0-10% at T=128, 3-21% at B=1).
            with_biases = tf.concat([kernel, folded[None]], axis=0)
            kernel_zr, kernel_n = with_biases[:, : 2 * units], with_biases[:, 2 * units:]
            ones_column = tf.pad(x_tm, [[0, 0], [0, 0], [0, 1]], constant_values=1.0)

            def project(block):
                return block_product(block[0], kernel_zr), block_product(block[0], kernel_n)

            hs, _ = state_scan(forward, (ones_column,), h0, units, project=project)
        else:
            # TF's GRUBlockCell is this cell's step in one op, the input product with it.
            block_weights = gru_block_cell_weights(kernel, recurrent, bias)
            hs, _ = state_scan(lambda inputs, h: tf.raw_ops.GRUBlockCell(x=inputs[0], h_prev=h, **block_weights).h,
                               (x_tm,), h0, units)
        # What the gradient reads, differentiable (second derivatives) as a one-step loop: TF has no
        # gradient of `GRUBlockCell`, and the unrolled loop's would take long to build.
        twin = functools.partial(gru_twin, reset_after=reset_after)
        (hs,) = differentiable_as((hs,), (x_tm, h0, kernel, recurrent, bias), twin)
        last = last_or_initial(h0, hs)  # h_T read from those outputs, so it needs no twin of its own

        def grad(d_hs, d_last):
            d_hs, d_last = dense_upstream(d_hs, hs), dense_upstream(d_last, last)
            x_zr, x_n = projections(x_tm, kernel, folded)
            previous = previous_steps(h0, hs)
            # Every step's gates at once, from the outputs: one matrix product per recurrent block.
            if reset_after:
                h_zr, h_n = tf.split(matmul_seq(previous, recurrent), [2 * units, units], axis=-1)
                h_n = h_n + b_rn
                z, r = tf.split(tf.sigmoid(x_zr + h_zr), 2, axis=-1)
                n = tf.tanh(x_n + r * h_n)
            else:
                z, r = tf.split(tf.sigmoid(x_zr + matmul_seq(previous, u_zr)), 2, axis=-1)
                reset_previous = r * previous
                n = tf.tanh(x_n + matmul_seq(reset_previous, u_n))
            d_n_pre = tanh_grad(y=n, dy=1.0 - z)  # d(pre-activation of n) / dh
            d_z_pre = sigmoid_grad(y=z, dy=previous - n)  # d(pre-activation of z) / dh
            if reset_after:
                d_r_pre = sigmoid_grad(y=r, dy=d_n_pre * h_n)
                # d(h @ U) / dh per step, for the three gate blocks.
                coefficients = tf.concat([d_z_pre, d_r_pre, d_n_pre * r], axis=-1)
                u_t = tf.transpose(recurrent)

                def backward(inputs, state):
                    upstream, z_t, coefficients_t = inputs
                    d_h = upstream + state[0]
                    d_recurrent = tf.concat([d_h, d_h, d_h], axis=-1) * coefficients_t
                    return (d_h,), (d_h * z_t + d_recurrent @ u_t,)

                (d_h,), (d_h0,) = scan(backward, (d_hs, z, coefficients), (d_last,), (units,), reverse=True)
                d_z, d_r, d_n = d_h * d_z_pre, d_h * d_r_pre, d_h * d_n_pre
                d_projected = tf.concat([d_z, d_r, d_n], axis=-1)
                d_inner = tf.concat([d_z, d_r, d_n * r], axis=-1)
                d_recurrent_kernel = outer_sum(previous, d_inner)
                d_bias = tf.stack([tf.reduce_sum(d_projected, axis=[0, 1]), tf.reduce_sum(d_inner, axis=[0, 1])])
            else:
                d_r_scale = sigmoid_grad(y=r, dy=previous)  # d(pre-activation of r) / d(r * h)
                u_n_t, u_zr_t = tf.transpose(u_n), tf.transpose(u_zr)

                def backward(inputs, state):
                    upstream, z_t, r_t, d_n_t, d_z_t, d_r_t = inputs
                    d_h = upstream + state[0]
                    d_reset = (d_h * d_n_t) @ u_n_t  # d(r * h_{t-1})
                    d_zr = tf.concat([d_h * d_z_t, d_reset * d_r_t], axis=-1)
                    return (d_h, d_reset), (d_h * z_t + d_reset * r_t + d_zr @ u_zr_t,)

                (d_h, d_reset), (d_h0,) = scan(backward, (d_hs, z, r, d_n_pre, d_z_pre, d_r_scale), (d_last,),
                                               (units, units), reverse=True)
                d_z, d_r, d_n = d_h * d_z_pre, d_reset * d_r_scale, d_h * d_n_pre
                d_projected = tf.concat([d_z, d_r, d_n], axis=-1)
                d_recurrent_kernel = tf.concat(
                    [outer_sum(previous, tf.concat([d_z, d_r], axis=-1)), outer_sum(reset_previous, d_n)], axis=-1)
                d_bias = tf.reduce_sum(d_projected, axis=[0, 1])
            return (matmul_seq(d_projected, kernel, transpose_b=True), d_h0, outer_sum(x_tm, d_projected),
                    d_recurrent_kernel, d_bias)

        return (hs, last), grad

    return run(x_tm, h0, kernel, recurrent, bias)


def gru_block_cell_weights(kernel, recurrent, bias) -> dict:
    """`GRUBlockCell`'s weights from a Keras `GRUCell(reset_after=False)`'s (gate blocks z, r, h):
    `w_ru = [W; U]` for (r, z) in that op's order, `w_c = [W_h; U_h]`, and the biases to match.

    Its step is Keras's: `r, u = sigmoid([x, h] @ w_ru + b_ru)`, `c = tanh([x, r * h] @ w_c + b_c)`,
    `h' = u * h + (1 - u) * c`, with u Keras's z.
    """
    import tensorflow as tf

    units = int(recurrent.shape[0])

    def r_then_z(matrix):
        return tf.concat([matrix[..., units:2 * units], matrix[..., :units]], axis=-1)

    return {"w_ru": tf.concat([r_then_z(kernel), r_then_z(recurrent)], axis=0),
            "w_c": tf.concat([kernel[:, 2 * units:], recurrent[:, 2 * units:]], axis=0),
            "b_ru": r_then_z(bias), "b_c": bias[2 * units:]}


def differentiable_as(values: tuple, inputs: tuple, twin: Callable) -> tuple:
    """`values` as they are, for a hand-written gradient to read; their derivative w.r.t. `inputs`
    is that of `twin(*inputs)`, a plain-TF computation of the same values.

    Why: a hand-written gradient is differentiated in turn for second derivatives (a nested tape,
    through a reloaded SavedModel too), and so is everything it reads. A fast kernel's outputs
    may have no derivative in TF (`GRUBlockCell`) or a wrong one (`BlockLSTM`'s registered
    gradient ignores the gradients of the gates it returns). Read through this, they are
    differentiated as the twin: a loop of ops TF differentiates, run only for second
    derivatives (a first derivative never differentiates what its gradient reads). This
    custom gradient sits in the forward function, whose custom gradients a SavedModel keeps.
    """
    import tensorflow as tf

    count = len(values)

    @tf.custom_gradient
    def read(*tensors):
        kept, sources = tensors[:count], tensors[count:]

        def grad(*upstream):
            with tf.GradientTape() as tape:
                tape.watch(sources)
                recomputed = twin(*sources)
            upstream = [dense_upstream(u, v) for u, v in zip(upstream, kept)]
            grads = tape.gradient(list(recomputed), list(sources), output_gradients=upstream,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return (*(None for _ in kept), *grads)

        return tuple(tf.identity(v) for v in kept), grad

    return read(*values, *inputs)


def gru_twin(x_tm, h0, kernel, recurrent, bias, *, reset_after: bool):
    """Keras's `GRUCell` over `x_tm [T, B, F]` in plain TF ops, one step per iteration: (hs [T, B, U],)."""
    import tensorflow as tf

    units = int(recurrent.shape[0])
    input_bias, recurrent_bias = (bias[0], bias[1]) if reset_after else (bias, None)

    def step(inputs, state):
        h = state[0]
        x_z, x_r, x_n = tf.split(inputs[0] @ kernel + input_bias, 3, axis=-1)
        if reset_after:
            h_z, h_r, h_n = tf.split(h @ recurrent + recurrent_bias, 3, axis=-1)
        else:
            h_z, h_r = tf.split(h @ recurrent[:, : 2 * units], 2, axis=-1)
        z, r = tf.sigmoid(x_z + h_z), tf.sigmoid(x_r + h_r)
        n = tf.tanh(x_n + (r * h_n if reset_after else (r * h) @ recurrent[:, 2 * units:]))
        h = n + z * (h - n)
        return (h,), (h,)

    (hs,), _ = scan(step, (x_tm,), (h0,), (units,), unroll=1)
    return (hs,)


def simple_rnn_twin(x_tm, h0, kernel, recurrent, bias):
    """Keras's tanh `SimpleRNNCell` over `x_tm [T, B, F]` in plain TF ops, one step per iteration: (hs,)."""
    import tensorflow as tf

    def step(inputs, state):
        h = tf.tanh(inputs[0] @ kernel + bias + state[0] @ recurrent)
        return (h,), (h,)

    (hs,), _ = scan(step, (x_tm,), (h0,), (int(recurrent.shape[0]),), unroll=1)
    return (hs,)


def simple_rnn_stack_twin(x_tm, *weights, count: int):
    """`simple_rnn_stack_sequence`'s outputs, layer after layer as `simple_rnn_twin`: (hs of each layer)."""
    h0s, kernels, recurrents, biases = (weights[i * count:(i + 1) * count] for i in range(4))
    outputs, inputs = [], x_tm
    for i in range(count):
        (inputs,) = simple_rnn_twin(inputs, h0s[i], kernels[i], recurrents[i], biases[i])
        outputs.append(inputs)
    return tuple(outputs)


def in_halves(run: Callable, inputs, states: tuple):
    """`run(x_tm [T, b, ...], states) -> (seq [T, b, ...], final states)` on the two halves of the
    time-major `inputs [T, B, ...]` (and of the batch-major `states`), joined: returns
    (seq [T, B, ...], final states).

    Rows are independent, so the halves run as two ops (or loops) at once: TF's executor
    runs independent ops in parallel, where one sequence of small steps keeps one of two
    cores busy. Always two, one of them empty at B <= 1: no tf.cond, whose gradient fails
    around a custom gradient when taken through a function call (cond_v2's
    _resolve_grad_inputs); an empty half's loops run no iteration.
    """
    import tensorflow as tf

    batch = tf.shape(inputs)[1]
    sizes = tf.stack([batch // 2, batch - batch // 2])
    halves = tf.split(inputs, sizes, axis=1, num=2)
    state_halves = [tf.split(s, sizes, axis=0, num=2) for s in states]
    runs = [run(x, tuple(s[i] for s in state_halves)) for i, x in enumerate(halves)]
    joined = tf.concat([seq for seq, _ in runs], axis=1)
    return joined, tuple(tf.concat(list(pair), axis=0) for pair in zip(*(final for _, final in runs)))


def wants_halves(cell) -> bool:
    """Whether a SimpleRNN or GRU cell's loop gains from two batch halves (`in_halves`): its
    step product is at least `SPLIT_MIN_COLUMNS` wide."""
    return int(cell.recurrent_kernel.shape[1]) >= SPLIT_MIN_COLUMNS


def hoisted_cell(cell) -> Callable:
    """`bind() -> (x_tm [T, B, F], (h,)) -> (h_seq [T, B, U], (h_T,))` for a Keras SimpleRNN or GRU
    cell; `bind` reads the weights once for every call of what it returns (both batch halves)."""
    is_gru = is_hoistable_gru(cell)

    def bind():
        kernel, recurrent, bias = cell_weights(cell)

        def run(x_tm, states):
            if is_gru:
                hs, last = gru_sequence(x_tm, states[0], kernel, recurrent, bias, reset_after=bool(cell.reset_after))
            else:
                hs, last = simple_rnn_sequence(x_tm, states[0], kernel, recurrent, bias)
            return hs, (last,)

        return run

    return bind


def cell_weights(cell) -> tuple:
    """(kernel, recurrent kernel, bias) of a Keras SimpleRNN or GRU cell as tensors; zeros for no bias."""
    import tensorflow as tf

    units = int(cell.units)
    kernel = tf.convert_to_tensor(cell.kernel.value)
    recurrent = tf.convert_to_tensor(cell.recurrent_kernel.value)
    if cell.use_bias:
        return kernel, recurrent, tf.convert_to_tensor(cell.bias.value)
    is_gru = is_hoistable_gru(cell)
    shape = [2, 3 * units] if is_gru and cell.reset_after else [3 * units if is_gru else units]
    return kernel, recurrent, tf.zeros(shape, kernel.dtype)


def simple_rnn_stack(cells) -> Callable:
    """`bind() -> (x_tm [T, B, F], (h_1, ..., h_N)) -> (h_N seq [T, B, U_N], (h_1T, ..., h_NT))` for
    consecutive Keras SimpleRNN cells (each `is_hoistable_simple_rnn`), as one wavefront loop
    (`simple_rnn_stack_sequence`); `bind` reads the weights once, as `hoisted_cell`'s."""

    def bind():
        weights = [cell_weights(cell) for cell in cells]

        def run(x_tm, states):
            top, lasts = simple_rnn_stack_sequence(x_tm, tuple(states), *(tuple(w[i] for w in weights) for i in range(3)))
            return top, tuple(lasts)

        return run

    return bind
