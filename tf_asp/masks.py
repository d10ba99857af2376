"""N:M masks: how they are computed and checked, and how many layers have them.

Every prunable kernel is pruned along its *input channels*: axis -2 of a Dense
kernel `(C, K)` or a Conv2D kernel `(H, W, C, K)`, the flattened contracted
axes of an EinsumDense kernel (`tf_asp.registry` says which kernels, and which
axes). In each run of M consecutive input channels (for every output, and
every spatial tap of a convolution) the N weights of largest score are kept:
2 of 4 by default (`tf_asp.patterns`). The score is the weight's magnitude,
or any same-shaped non-negative array (activation-aware scores:
`tf_asp.calibration`). A *transposable* mask is 2:4 along the outputs too
(`tf_asp.transposable`).

Ties break towards the lower channel index, so a mask depends on the scores
alone. With `padding=True`, a Dense kernel whose input dim is not a multiple
of M gets a last, partial group of `k < M` real weights; it keeps at most
`ceil(k * N / M)` of them (2:4: 1 of 1, 1 of 2, 2 of 3), as if the missing
weights were zero padding that always loses.

```python
nm_mask(kernel, input_axes=(0,), pattern="4:8")     # 4 of every 8 input channels
spec = MaskSpec((0,), (1,), pattern="2:4", transposable="best")
mask = spec.mask(kernel)                             # 2:4 both ways
spec.holds(kernel * mask)                            # True
```
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from tf_asp import registry
from tf_asp import transposable as two_d
from tf_asp.patterns import TWO_FOUR
from tf_asp.patterns import parse_pattern


def nm_mask(scores, input_axes=(-2,), pattern=TWO_FOUR):
    """Computes the N:M mask of a kernel along its input channels.

    Args:
        scores: the kernel (a float array or tensor of rank >= 2; its
            magnitudes are compared) or same-shaped scores.
        input_axes: the input-channel axes; the groups of M run along their
            flattened order (a `GemmKernel`'s `input_axes`). Any length
            works: a last group of `k < M` keeps `ceil(k * N / M)` weights.
        pattern: `"N:M"`, an `(n, m)` pair or a `tf_asp.patterns.Pattern`.

    Returns:
        A tensor of the scores' shape (and float dtype) holding 1.0 for kept
        weights and 0.0 for pruned ones.

    Example:

    >>> nm_mask(np.array([[1.0], [-4.0], [3.0], [2.0]])).numpy().ravel().tolist()
    [0.0, 1.0, 1.0, 0.0]
    >>> nm_mask(np.array([[1.0], [-4.0], [3.0], [2.0]]), pattern="1:4").numpy().ravel().tolist()
    [0.0, 1.0, 0.0, 0.0]
    """
    pattern = parse_pattern(pattern)
    scores = tf.convert_to_tensor(scores)
    dtype = scores.dtype if scores.dtype.is_floating else tf.float32
    rank_dtype = tf.float64 if scores.dtype == tf.float64 else tf.float32
    # Input axes last and flattened, so groups of M are contiguous.
    order, inputs = _inputs_last(scores.shape.rank, input_axes)
    transposed = tf.transpose(scores, order)
    outer = len(order) - len(inputs)
    moved = tf.reshape(transposed, tf.concat([tf.shape(transposed)[:outer], [-1]], 0))
    channels = math.prod(transposed.shape[outer:])
    padded_channels = -(-channels // pattern.m) * pattern.m
    magnitudes = tf.abs(tf.cast(moved, rank_dtype))
    if padded_channels != channels:
        pad = [[0, 0]] * (moved.shape.rank - 1) + [[0, padded_channels - channels]]
        # Padding sorts after every real weight, even a zero one.
        magnitudes = tf.pad(magnitudes, pad, constant_values=-1.0)
    groups = tf.reshape(magnitudes, tf.concat([tf.shape(magnitudes)[:-1], [-1, pattern.m]], 0))
    # top_k puts equal values in index order: ties go to the lower channel.
    order_in_group = tf.math.top_k(groups, pattern.m).indices
    rank = tf.argsort(order_in_group, axis=-1)  # how many weights come before each
    real = tf.reduce_sum(tf.cast(groups >= 0, tf.int32), axis=-1, keepdims=True)
    keep = rank < (real * pattern.n + pattern.m - 1) // pattern.m  # pattern.kept(real)
    keep = tf.reshape(keep, tf.shape(magnitudes))[..., :channels]
    keep = tf.reshape(tf.cast(keep, dtype), tf.shape(transposed))
    return tf.transpose(keep, np.argsort(order))


def mask_2to4(kernel, input_axes=(-2,)):
    """The 2:4 mask of `kernel` along its input channels (`nm_mask` for 2:4).

    >>> mask_2to4(np.array([[1.0], [-4.0], [3.0], [2.0]])).numpy().ravel().tolist()
    [0.0, 1.0, 1.0, 0.0]
    """
    return nm_mask(kernel, input_axes, TWO_FOUR)


def is_nm(kernel, input_axes=(-2,), pattern=TWO_FOUR):
    """True when at most N of every M input channels of `kernel` are non-zero.

    The input channels are the flattened `input_axes`. A last partial group
    of `k` channels (a padded Dense kernel) may hold at most
    `ceil(k * N / M)` non-zeros, the rule `nm_mask` prunes with.

    >>> kernel = np.array([[1.0], [0.0], [3.0], [0.0]])
    >>> is_nm(kernel), is_nm(kernel, pattern="1:4")
    (True, False)
    """
    pattern = parse_pattern(pattern)
    kernel = np.asarray(kernel)
    if kernel.ndim < 2 or kernel.size == 0:
        return False
    order, inputs = _inputs_last(kernel.ndim, input_axes)
    moved = kernel.transpose(order)
    nonzero = moved.reshape(moved.shape[: len(order) - len(inputs)] + (-1,)) != 0
    channels = nonzero.shape[-1]
    full = channels - channels % pattern.m
    groups = nonzero[..., :full].reshape(nonzero.shape[:-1] + (-1, pattern.m))
    partial = nonzero[..., full:]
    return bool(
        np.all(groups.sum(axis=-1) <= pattern.n)
        and np.all(partial.sum(axis=-1) <= pattern.kept(partial.shape[-1]))
    )


def is_2to4(kernel, input_axes=(-2,)):
    """True when at most 2 of every 4 input channels of `kernel` are non-zero.

    >>> is_2to4(np.array([[1.], [0.], [3.], [0.]]))
    True
    """
    return is_nm(kernel, input_axes, TWO_FOUR)


def is_transposable(kernel, input_axes=(-2,), output_axes=(-1,)):
    """True when every 4x4 block of the GEMM view `(inputs, outputs)` (per tap)
    holds at most 2 non-zeros in each row and column: 2:4 along the input
    channels and along the outputs, both multiples of 4.

    >>> is_transposable(np.eye(4)), is_transposable(np.ones((4, 4)))
    (True, False)
    """
    kernel = np.asarray(kernel)
    if kernel.ndim < 2:
        return False
    sizes = [
        math.prod(kernel.shape[int(a) % kernel.ndim] for a in axes)
        for axes in (input_axes, output_axes)
    ]
    return (
        all(size % two_d.BLOCK == 0 for size in sizes)
        and is_nm(kernel, input_axes, TWO_FOUR)
        and is_nm(kernel, output_axes, TWO_FOUR)
    )


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """How one kernel is masked: its GEMM axes, the pattern, 1-D or transposable.

    Attributes:
        input_axes: the axes N:M runs along (flattened).
        output_axes: the output axes (needed for transposable masks).
        pattern: a `tf_asp.patterns.Pattern` (or what `parse_pattern` takes).
        transposable: None (1-D masks), `"best"` or `"greedy"` (2:4 only).

    ```python
    spec = MaskSpec((2,), (3,), "2:4", transposable="greedy")   # a Conv2D kernel
    kernel.assign(kernel * spec.mask(kernel))
    ```
    """

    input_axes: tuple
    output_axes: tuple = None
    pattern: object = TWO_FOUR
    transposable: str = None

    def __post_init__(self):
        object.__setattr__(self, "input_axes", tuple(int(a) for a in self.input_axes))
        if self.output_axes is not None:
            object.__setattr__(self, "output_axes", tuple(int(a) for a in self.output_axes))
        object.__setattr__(self, "pattern", parse_pattern(self.pattern))
        method = two_d.check_method(self.transposable)
        object.__setattr__(self, "transposable", method)
        check_transposable_pattern(method, self.pattern)
        if method is not None and self.output_axes is None:
            raise ValueError("A transposable mask needs the kernel's output_axes.")

    def mask(self, scores):
        """The mask (a tensor of 1.0 and 0.0) from a kernel or its scores."""
        if self.transposable is not None:
            return two_d.transposable_mask(
                scores, self.input_axes, self.output_axes, self.transposable
            )
        return nm_mask(scores, self.input_axes, self.pattern)

    def holds(self, value):
        """True when `value` (a kernel) already has this structure."""
        if self.transposable is not None:
            return is_transposable(value, self.input_axes, self.output_axes)
        return is_nm(value, self.input_axes, self.pattern)


def check_transposable_pattern(transposable, pattern):
    """Raises a ValueError when transposable masks are asked for another pattern than 2:4."""
    if two_d.check_method(transposable) is not None and parse_pattern(pattern) != TWO_FOUR:
        raise ValueError(
            f"Transposable masks are 2:4 (4x4 blocks, 2 per row and column); got "
            f"pattern {parse_pattern(pattern)}. Use pattern='2:4' or transposable=False."
        )


def _inputs_last(rank, input_axes):
    """The transpose order that moves `input_axes` last, and those axes."""
    inputs = sorted({int(a) % rank for a in input_axes})
    return [a for a in range(rank) if a not in inputs] + inputs, inputs


def check_pruned_layers(
    model, show_all=False, check_structured=False, pattern=TWO_FOUR, transposable=False
):
    """Counts the GEMM layers of `model` whose kernels are pruned.

    Every layer that holds a GEMM kernel counts (Dense, EinsumDense and the
    layers inside MultiHeadAttention, convolutions, and the GEMM layers
    tf_asp leaves dense, such as Conv2DTranspose; see `tf_asp.registry`). A
    layer is pruned when each of its kernels has at least the pattern's
    share of zeros (half for 2:4) or, with `check_structured=True`, has the
    pattern exactly along its input channels.

    Args:
        model: a built Keras model.
        show_all: print one line per layer (name, kernel shape, zero
            fraction, whether it has the pattern, and why tf_asp leaves it
            dense if it does).
        check_structured: verify the N:M structure itself, not just the
            count of zeros.
        pattern: the pattern to check, `"2:4"` (default), `"1:2"`, `"4:8"`...
        transposable: also require 2:4 along the outputs (4x4 blocks).

    Returns:
        `(pruned_count, layer_count)`.

    Example:

    ```python
    pruned, total = tf_asp.check_pruned_layers(model, check_structured=True)
    print(f"{pruned}/{total} GEMM layers are 2:4 sparse")
    tf_asp.check_pruned_layers(model, check_structured=True, pattern="1:2")
    ```
    """
    pattern = parse_pattern(pattern)
    check_transposable_pattern(transposable, pattern)
    layers = registry.gemm_layers(model)
    pruned = 0
    for gemm in layers:
        states = [_kernel_state(kernel, pattern, transposable) for kernel in gemm.kernels]
        is_pruned = bool(states) and all(
            structured if check_structured else zeros >= 1 - pattern.density - 1e-9
            for zeros, structured in states
        )
        pruned += is_pruned
        if show_all:
            reason = gemm.unprunable_reason(padding=True)
            label = f"{pattern}{' transposable' if transposable else ''}"
            for kernel, (zeros, structured) in zip(gemm.kernels, states):
                print(
                    f"{gemm.name:<32} {str(kernel.shape):<22} zeros={zeros:6.1%} "
                    f"{label}={'yes' if structured else 'no'}"
                    + (f"  (dense: {reason})" if reason else "")
                )
            if not gemm.kernels:
                print(f"{gemm.name:<32} {'-':<22} dense: {reason}")
    return pruned, len(layers)


def _kernel_state(kernel, pattern, transposable):
    """(zero fraction, has the structure) of a `GemmKernel`'s current value."""
    value = kernel.variable.numpy()
    zeros = 1.0 - np.count_nonzero(value) / max(value.size, 1)
    spec = MaskSpec(kernel.input_axes, kernel.output_axes, pattern, transposable)
    return zeros, spec.holds(value)
