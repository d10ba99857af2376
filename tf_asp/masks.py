"""2:4 masks: how they are computed and checked, and how many layers have them.

Every prunable kernel is pruned along its *input channels*: axis -2 of a Dense
kernel `(C, K)` or a Conv2D kernel `(H, W, C, K)`, the flattened contracted
axes of an EinsumDense kernel (`tf_asp.registry` says which kernels, and which
axes). In each run of 4 consecutive input channels (for every output, and
every spatial tap of a convolution) the 2 weights of largest magnitude are
kept.

Ties break towards the lower channel index, so a mask depends on the weights
alone. With `padding=True`, a Dense kernel whose input dim is not a multiple
of 4 gets a last, partial group of `n < 4` real weights; it keeps at most
`ceil(n / 2)` of them (1 of 1, 1 of 2, 2 of 3), so no partial group is denser
than half, as if the missing weights were zero padding that always loses.
"""

import math

import numpy as np
import tensorflow as tf

from tf_asp import registry

M = 4  # group size along the input-channel axis
N = 2  # weights kept per full group


def mask_2to4(kernel, input_axes=(-2,)):
    """Computes the 2:4 mask of `kernel` along its input channels.

    Args:
        kernel: a float array or tensor of rank >= 2.
        input_axes: the input-channel axes; the groups of 4 run along their
            flattened order (a `GemmKernel`'s `input_axes`). Any length
            works: a last group shorter than 4 keeps `ceil(n / 2)` weights.

    Returns:
        A tensor of the kernel's shape and dtype holding 1.0 for kept weights
        and 0.0 for pruned ones.

    Example:

    >>> mask_2to4(np.array([[1.], [-4.], [3.], [2.]])).numpy().ravel()
    array([0., 1., 1., 0.], dtype=float32)
    """
    kernel = tf.convert_to_tensor(kernel)
    if kernel.dtype == tf.float64:
        rank_dtype = tf.float64
    else:
        rank_dtype = tf.float32
    # Input axes last and flattened, so groups of 4 are contiguous.
    order, inputs = _inputs_last(kernel.shape.rank, input_axes)
    transposed = tf.transpose(kernel, order)
    outer = len(order) - len(inputs)
    moved = tf.reshape(transposed, tf.concat([tf.shape(transposed)[:outer], [-1]], 0))
    channels = math.prod(transposed.shape[outer:])
    padded_channels = -(-channels // M) * M
    magnitudes = tf.abs(tf.cast(moved, rank_dtype))
    if padded_channels != channels:
        pad = [[0, 0]] * (moved.shape.rank - 1) + [[0, padded_channels - channels]]
        # Padding sorts after every real weight, even a zero one.
        magnitudes = tf.pad(magnitudes, pad, constant_values=-1.0)
    groups = tf.reshape(magnitudes, tf.concat([tf.shape(magnitudes)[:-1], [-1, M]], 0))
    # Rank within the group: how many weights beat this one; ties go to the
    # lower index (a weight is beaten by an equal one only from its left).
    left = groups[..., :, None]  # the weight being ranked, index i
    right = groups[..., None, :]  # every competitor, index j
    index = tf.range(M)
    earlier = index[None, :] < index[:, None]  # [i, j]: j comes before i
    beaten_by = (right > left) | ((right == left) & earlier)
    rank = tf.reduce_sum(tf.cast(beaten_by, tf.int32), axis=-1)
    real = tf.reduce_sum(tf.cast(groups >= 0, tf.int32), axis=-1, keepdims=True)
    keep = rank < (real + 1) // 2  # 2 of 4, and ceil(n / 2) of a partial n
    keep = tf.reshape(keep, tf.shape(magnitudes))[..., :channels]
    keep = tf.reshape(tf.cast(keep, kernel.dtype), tf.shape(transposed))
    return tf.transpose(keep, np.argsort(order))


def is_2to4(kernel, input_axes=(-2,)):
    """True when at most 2 of every 4 input channels of `kernel` are non-zero.

    The input channels are the flattened `input_axes`. A last partial group
    of `n` channels (a padded Dense kernel) may hold at most `ceil(n / 2)`
    non-zeros, the rule `mask_2to4` prunes with.

    >>> is_2to4(np.array([[1.], [0.], [3.], [0.]]))
    True
    """
    kernel = np.asarray(kernel)
    if kernel.ndim < 2 or kernel.size == 0:
        return False
    order, inputs = _inputs_last(kernel.ndim, input_axes)
    moved = kernel.transpose(order)
    nonzero = moved.reshape(moved.shape[: len(order) - len(inputs)] + (-1,)) != 0
    channels = nonzero.shape[-1]
    full = channels - channels % M
    groups = nonzero[..., :full].reshape(nonzero.shape[:-1] + (-1, M))
    partial = nonzero[..., full:]
    return bool(
        np.all(groups.sum(axis=-1) <= N)
        and np.all(partial.sum(axis=-1) <= (partial.shape[-1] + 1) // 2)
    )


def _inputs_last(rank, input_axes):
    """The transpose order that moves `input_axes` last, and those axes."""
    inputs = sorted({int(a) % rank for a in input_axes})
    return [a for a in range(rank) if a not in inputs] + inputs, inputs


def check_pruned_layers(model, show_all=False, check_structured=False):
    """Counts the GEMM layers of `model` whose kernels are pruned.

    Every layer that holds a GEMM kernel counts (Dense, EinsumDense and the
    layers inside MultiHeadAttention, convolutions, and the GEMM layers
    tf_asp leaves dense, such as Conv2DTranspose; see `tf_asp.registry`). A
    layer is pruned when each of its kernels has half of its weights zero
    or, with `check_structured=True`, is exactly 2:4 along its input
    channels.

    Args:
        model: a built Keras model.
        show_all: print one line per layer (name, kernel shape, zero
            fraction, 2:4, and why tf_asp leaves it dense if it does).
        check_structured: verify the 2:4 structure itself, not just the count
            of zeros.

    Returns:
        `(pruned_count, layer_count)`.

    Example:

    ```python
    pruned, total = tf_asp.check_pruned_layers(model, check_structured=True)
    print(f"{pruned}/{total} GEMM layers are 2:4 sparse")
    ```
    """
    layers = registry.gemm_layers(model)
    pruned = 0
    for gemm in layers:
        states = [_kernel_state(kernel) for kernel in gemm.kernels]
        is_pruned = bool(states) and all(
            structured if check_structured else zeros >= 0.5 for zeros, structured in states
        )
        pruned += is_pruned
        if show_all:
            reason = gemm.unprunable_reason(padding=True)
            for kernel, (zeros, structured) in zip(gemm.kernels, states):
                print(
                    f"{gemm.name:<32} {str(kernel.shape):<22} zeros={zeros:6.1%} "
                    f"2:4={'yes' if structured else 'no'}"
                    + (f"  (dense: {reason})" if reason else "")
                )
            if not gemm.kernels:
                print(f"{gemm.name:<32} {'-':<22} dense: {reason}")
    return pruned, len(layers)


def _kernel_state(kernel):
    """(zero fraction, is 2:4) of a `GemmKernel`'s current value."""
    value = kernel.variable.numpy()
    zeros = 1.0 - np.count_nonzero(value) / max(value.size, 1)
    return zeros, is_2to4(value, kernel.input_axes)
