"""Transposable (2-D) 2:4 masks: 2:4 along the input channels *and* the outputs.

Training multiplies by a kernel twice: the forward pass contracts its input
channels, the backward pass (the input gradient) contracts its outputs. A
1-D 2:4 mask makes only the first sparse. A *transposable* mask splits the
kernel's GEMM view `(input channels, output channels)` into 4x4 blocks and
keeps at most 2 weights in every row and every column of each block, so the
transposed kernel is 2:4 too.

A convolution is blocked tap by tap: for every spatial position of the
kernel, its `(C, K)` matrix is split into 4x4 blocks. An EinsumDense kernel's
input axes and output axes are each flattened (row-major), as for 1-D masks.
Both channel counts must be multiples of 4.

Two ways to choose a block's mask:

- `"best"`: the exact best, the one of the 90 4x4 patterns with exactly 2
  in every row and column that keeps the largest score sum. Ties go to the
  first pattern of `block_patterns()`.
- `"greedy"`: visit the 16 weights from the largest (ties: lower input
  channel, then lower output channel) and keep each one whose row and column
  still hold fewer than 2. Cheaper, not always optimal, and a block may end
  with fewer than 8 weights kept (every row and column at most 2).

```python
mask = transposable_mask(kernel, input_axes=(0,), output_axes=(1,))       # Dense (C, K)
mask = transposable_mask(conv.kernel, (2,), (3,), method="greedy")        # per tap
tf_asp.masks.is_transposable(kernel * mask, (0,), (1,))                   # True
```
"""

import itertools
import math

import numpy as np
import tensorflow as tf

BLOCK = 4  # 4x4 blocks, 2 kept per row and column
KEPT = 2
METHODS = ("best", "greedy")


def block_patterns():
    """The 90 valid 4x4 block masks as a `(90, 16)` float32 array (row-major).

    Ordered by the kept columns of row 0, then of row 1, ... (each row's
    pairs in lexicographic order), so earlier patterns keep lower channels.

    >>> block_patterns().shape
    (90, 16)
    """
    pairs = np.zeros((math.comb(BLOCK, KEPT), BLOCK), np.float32)
    for index, columns in enumerate(itertools.combinations(range(BLOCK), KEPT)):
        pairs[index, list(columns)] = 1.0
    choices = np.indices((len(pairs),) * BLOCK).reshape(BLOCK, -1).T  # row-major order
    blocks = pairs[choices]  # (6**4, 4 rows, 4 columns)
    valid = np.all(blocks.sum(axis=1) == KEPT, axis=-1)
    return blocks[valid].reshape(-1, BLOCK * BLOCK)


def check_method(method):
    """`"best"` or `"greedy"` from `transposable=` (True means `"best"`), or None."""
    if method is None or method is False:
        return None
    if method is True:
        return "best"
    if isinstance(method, str) and method in METHODS:
        return method
    raise ValueError(
        f"transposable={method!r}: use False (1-D masks), True or 'best' (the exact best "
        "transposable mask of every 4x4 block) or 'greedy' (a fast greedy one)."
    )


def transposable_mask(scores, input_axes=(-2,), output_axes=(-1,), method="best"):
    """The transposable 2:4 mask of a kernel, from the scores of its weights.

    Args:
        scores: the kernel (its magnitudes are used) or any same-shaped
            scores (`|w|` times activation norms).
        input_axes, output_axes: the GEMM view (`tf_asp.GemmKernel`); each
            group is flattened row-major and must hold a multiple of 4
            channels. Any other axis (a convolution's taps) is a separate
            GEMM.
        method: `"best"` or `"greedy"` (see the module docstring).

    Returns:
        A float tensor of 1.0 (kept) and 0.0 (pruned), shaped like `scores`.

    >>> m = transposable_mask(np.arange(16.0).reshape(4, 4), (0,), (1,)).numpy()
    >>> m.sum(axis=0).tolist(), m.sum(axis=1).tolist()
    ([2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0])
    """
    method = check_method(method) or "best"
    scores = tf.convert_to_tensor(scores)
    dtype = scores.dtype
    rank = scores.shape.rank
    shape = [int(d) for d in scores.shape]
    inputs = sorted(int(a) % rank for a in input_axes)
    outputs = sorted(int(a) % rank for a in output_axes)
    taps = [a for a in range(rank) if a not in inputs + outputs]
    channels = math.prod(shape[a] for a in inputs)
    filters = math.prod(shape[a] for a in outputs)
    if channels % BLOCK or filters % BLOCK:
        raise ValueError(
            f"A transposable mask needs the input and output channels in multiples of "
            f"{BLOCK}; kernel {tuple(shape)} has {channels} inputs and {filters} outputs."
        )
    order = taps + inputs + outputs
    moved = tf.transpose(scores, order)
    tap_count = math.prod(shape[a] for a in taps)
    blocks = tf.reshape(moved, (tap_count, channels // BLOCK, BLOCK, filters // BLOCK, BLOCK))
    blocks = tf.transpose(blocks, (0, 1, 3, 2, 4))
    flat = tf.reshape(tf.abs(tf.cast(blocks, _score_dtype(dtype))), (-1, BLOCK * BLOCK))
    keep = _best(flat) if method == "best" else _greedy(flat)
    keep = tf.reshape(keep, (tap_count, channels // BLOCK, filters // BLOCK, BLOCK, BLOCK))
    keep = tf.transpose(keep, (0, 1, 3, 2, 4))
    keep = tf.reshape(keep, [shape[a] for a in order])
    keep = tf.transpose(keep, np.argsort(order))
    return tf.cast(keep, dtype if dtype.is_floating else tf.float32)


def _score_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


def _best(flat):
    """Each row of `flat` (a block's 16 scores) -> the best of the 90 patterns."""
    patterns = tf.constant(block_patterns(), flat.dtype)
    sums = tf.linalg.matmul(flat, patterns, transpose_b=True)
    # argmax returns the first of equal maxima: ties go to the earlier pattern.
    return tf.gather(patterns, tf.argmax(sums, axis=-1, output_type=tf.int32))


def _greedy(flat):
    """Each row of `flat` -> greedily the largest that fit 2 per row and column."""
    order = tf.math.top_k(flat, BLOCK * BLOCK).indices  # ties: lower index first
    count = tf.shape(flat)[0]
    keep = tf.zeros_like(flat)
    rows = tf.zeros((count, BLOCK), flat.dtype)
    columns = tf.zeros((count, BLOCK), flat.dtype)
    for step in range(BLOCK * BLOCK):
        index = order[:, step]
        row = tf.one_hot(index // BLOCK, BLOCK, dtype=flat.dtype)
        column = tf.one_hot(index % BLOCK, BLOCK, dtype=flat.dtype)
        free = tf.logical_and(
            tf.reduce_sum(rows * row, axis=-1) < KEPT,
            tf.reduce_sum(columns * column, axis=-1) < KEPT,
        )
        take = tf.cast(free, flat.dtype)[:, None]
        keep += tf.one_hot(index, BLOCK * BLOCK, dtype=flat.dtype) * take
        rows += row * take
        columns += column * take
    return keep
