"""2:4 masks: which kernels can be pruned, how their masks are computed.

Every prunable kernel is pruned along its *input-channel* axis, which for both
a Dense kernel `(C, K)` and a Conv2D kernel `(H, W, C, K)` is axis `-2`: in each
run of 4 consecutive input channels (for every output, and every spatial tap of
a convolution) the 2 weights of largest magnitude are kept.

Ties break towards the lower channel index, so a mask depends on the weights
alone. With `padding=True`, a Dense kernel whose input dim is not a multiple
of 4 gets a last, partial group of `n < 4` real weights; it keeps at most
`ceil(n / 2)` of them (1 of 1, 1 of 2, 2 of 3), so no partial group is denser
than half, as if the missing weights were zero padding that always loses.
"""

import numpy as np
import tensorflow as tf

M = 4  # group size along the input-channel axis
N = 2  # weights kept per full group


def prunable_kernel(layer):
    """Returns the kernel variable tf_asp may prune in `layer`, or None.

    Only `Dense` and `Conv2D` layers (including subclasses) have one.
    """
    if isinstance(layer, (tf.keras.layers.Dense, tf.keras.layers.Conv2D)):
        if isinstance(layer, tf.keras.layers.Conv2D) and _is_grouped(layer):
            return None
        return getattr(layer, "kernel", None)
    return None


def _is_grouped(layer):
    return getattr(layer, "groups", 1) not in (None, 1)


def unprunable_reason(layer, padding=False):
    """Why `layer` will not be pruned, or None when it will be.

    The rules are those of sparse Tensor Cores: the kernel's input dim must be
    a multiple of 16 and its output dim a multiple of 8 (a Conv2D kernel
    `(H, W, C, K)` is viewed as `(C, H*W*K)`). With `padding=True` a Dense
    kernel's input dim may be anything; its last group is padded.
    """
    if not isinstance(layer, (tf.keras.layers.Dense, tf.keras.layers.Conv2D)):
        return f"{type(layer).__name__} is not a Dense or Conv2D layer"
    if isinstance(layer, tf.keras.layers.Conv2D) and _is_grouped(layer):
        return f"grouped convolution (groups={layer.groups}) is not supported"
    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        return "layer is not built (it has no kernel yet)"
    shape = tuple(kernel.shape)
    channels, outputs = shape[-2], shape[-1]
    is_dense = isinstance(layer, tf.keras.layers.Dense)
    if outputs % 8:
        return f"output dim {outputs} of kernel {shape} is not a multiple of 8"
    if channels % 16 and not (padding and is_dense):
        hint = " (padding=True would prune it)" if is_dense else ""
        return f"input dim {channels} of kernel {shape} is not a multiple of 16{hint}"
    return None


def mask_2to4(kernel):
    """Computes the 2:4 mask of `kernel` along its input-channel axis (-2).

    Args:
        kernel: a float array or tensor of rank >= 2; axis -2 is the input
            channels. Any length works: a last group shorter than 4 keeps
            `ceil(n / 2)` weights.

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
    # Move the input axis last so groups of 4 are contiguous in memory.
    moved = tf.experimental.numpy.moveaxis(kernel, -2, -1)
    channels = moved.shape[-1]
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
    mask = tf.experimental.numpy.moveaxis(tf.cast(keep, kernel.dtype), -1, -2)
    return mask


def is_2to4(kernel):
    """True when at most 2 of every 4 input channels of `kernel` are non-zero.

    The input-channel axis is -2. A last partial group of `n` channels (a
    padded Dense kernel) may hold at most `ceil(n / 2)` non-zeros, the rule
    `mask_2to4` prunes with.

    >>> is_2to4(np.array([[1.], [0.], [3.], [0.]]))
    True
    """
    kernel = np.asarray(kernel)
    if kernel.ndim < 2 or kernel.shape[-2] == 0:
        return False
    nonzero = np.moveaxis(kernel, -2, -1) != 0
    channels = nonzero.shape[-1]
    full = channels - channels % M
    groups = nonzero[..., :full].reshape(nonzero.shape[:-1] + (-1, M))
    partial = nonzero[..., full:]
    return bool(
        np.all(groups.sum(axis=-1) <= N)
        and np.all(partial.sum(axis=-1) <= (partial.shape[-1] + 1) // 2)
    )


def _dense_and_conv_layers(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, (tf.keras.layers.Dense, tf.keras.layers.Conv2D))
    ]


def check_pruned_layers(model, show_all=False, check_structured=False):
    """Counts the Dense and Conv2D layers of `model` whose kernel is pruned.

    A kernel counts as pruned when half of its weights are zero or, with
    `check_structured=True`, when it is exactly 2:4 along its input channels.

    Args:
        model: a built Keras model.
        show_all: print one line per layer (name, shape, zero fraction, 2:4).
        check_structured: verify the 2:4 structure itself, not just the count
            of zeros.

    Returns:
        `(pruned_count, layer_count)`.

    Example:

    ```python
    pruned, total = tf_asp.check_pruned_layers(model, check_structured=True)
    print(f"{pruned}/{total} layers are 2:4 sparse")
    ```
    """
    layers = _dense_and_conv_layers(model)
    pruned = 0
    for layer in layers:
        kernel = np.asarray(layer.kernel)
        zeros = 1.0 - np.count_nonzero(kernel) / max(kernel.size, 1)
        structured = is_2to4(kernel)
        is_pruned = structured if check_structured else zeros >= 0.5
        pruned += is_pruned
        if show_all:
            print(
                f"{layer.name:<32} {str(kernel.shape):<22} "
                f"zeros={zeros:6.1%} 2:4={'yes' if structured else 'no'}"
            )
    return pruned, len(layers)
