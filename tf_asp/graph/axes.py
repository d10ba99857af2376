"""Where an op moves a tensor's channel axes: pure functions of static shapes.

A data tensor holds its channels on one or more *channel axes*, flattened
row-major in the order listed (major first): `(2,)` for a `(batch, tokens,
channels)` tensor, `(2, 3)` once `Reshape` split the channels into `(heads,
head_dim)`, `(1, 3)` after transposing that to `(batch, heads, tokens,
head_dim)`. Each function says where those axes are after an op, or returns
None when the op mixes them with other axes (the permutation cannot cross).

```python
reshape_axes((2, 16, 64), (2,), (2, 16, 4, 16))       # (2, 3)
transpose_axes((0, 2, 1, 3), (2, 3))                  # (1, 3)
regroup((64, 4, 16), [(0,), (1,), (2,)], (64, 64))    # [(0,), (1, 2)]
```

The last few functions read what they need from a traced op or tensor.
"""

import math

import tensorflow as tf


def last_axis(rank):
    """The default channel axes of a tensor of `rank`: its last axis."""
    return (rank - 1,) if rank else ()


def reshape_axes(in_shape, axes, out_shape):
    """The channel axes after reshaping `in_shape` to `out_shape`, or None.

    The channel axes must be the trailing axes; the reshape may regroup them
    (split `C` into `(heads, head_dim)` or merge them back) and regroup the
    leading axes, but not move values between the two.

    >>> reshape_axes((2, 16, 4, 16), (2, 3), (32, 64))
    (1,)
    """
    rank, count = len(in_shape), len(axes)
    if not count or tuple(axes) != tuple(range(rank - count, rank)):
        return None
    channels = math.prod(in_shape[rank - count :])
    leading = math.prod(in_shape[: rank - count])
    product = 1
    for start in range(len(out_shape) - 1, -1, -1):
        product *= out_shape[start]
        if product == channels and math.prod(out_shape[:start]) == leading:
            return tuple(range(start, len(out_shape)))
        if product > channels:
            return None
    return None


def transpose_axes(perm, axes):
    """The channel axes after `Transpose(perm)`: output axis `i` is input
    axis `perm[i]`."""
    perm = [int(p) for p in perm]
    return tuple(perm.index(a) for a in axes)


def broadcast_axes(in_rank, out_rank, axes):
    """The channel axes of an operand of `in_rank` broadcast to `out_rank`
    (NumPy aligns the trailing axes)."""
    return tuple(a + out_rank - in_rank for a in axes)


def regroup(in_shape, groups, out_shape):
    """A reshape of a kernel, followed axis by axis.

    `groups[i]` lists the variable axes that input axis `i` holds (merged,
    row-major). Returns the same for each output axis, or None if the
    reshape splits an axis. Axes of size 1 hold nothing.

    >>> regroup((3, 32, 64), [(0,), (1,), (2,)], (1, 3, 32, 64))
    [(), (0,), (1,), (2,)]
    """
    pending = [(d, g) for d, g in zip(in_shape, groups) if d != 1]
    result = []
    for size in out_shape:
        merged, product = (), 1
        while product < size and pending:
            dim, group = pending.pop(0)
            merged, product = merged + tuple(group), product * dim
        if product != size:
            return None
        result.append(merged)
    return result if not pending else None


def kept_axes_of_slice(rank, begin, end, strides, masks, dims):
    """Input axis -> output axis for every axis a `StridedSlice` keeps whole,
    or None for slices with an ellipsis or new axes.

    `masks` holds the op's `begin_mask`, `end_mask`, `shrink_axis_mask`,
    `ellipsis_mask` and `new_axis_mask`.
    """
    if masks["ellipsis_mask"] or masks["new_axis_mask"]:
        return None
    kept, out = {}, 0
    for axis in range(rank):
        if axis >= len(begin):
            kept[axis], out = out, out + 1
            continue
        bit = 1 << axis
        if masks["shrink_axis_mask"] & bit:
            continue
        dim = dims[axis]
        first = 0 if masks["begin_mask"] & bit else _index(begin[axis], dim)
        last = dim if masks["end_mask"] & bit else _index(end[axis], dim)
        if first <= 0 and last >= dim and strides[axis] == 1:
            kept[axis] = out
        out += 1
    return kept


def reduced_axes(rank, reduction, axes, keep_dims):
    """The channel axes after a reduction over the `reduction` axes, which
    must not include any of them."""
    reduction = {int(a) % rank for a in reduction}
    if keep_dims:
        return tuple(axes)
    return tuple(a - sum(r < a for r in reduction) for a in axes)


def heads_of(axes, mixed, dims):
    """For an op that mixes values along the `mixed` axes (a softmax, a
    reduction) some of which are channel axes: how many heads it works
    within. 1 when it mixes every channel (the result does not depend on
    their order), `n` when it mixes only the minor channel axes, once per
    index `n` of the major ones (a per-head softmax); None otherwise.

    >>> heads_of((2, 3), {3}, (2, 16, 4, 8)), heads_of((2, 3), {2}, (2, 16, 4, 8))
    (4, None)
    """
    inside = [a in mixed for a in axes]
    if inside != sorted(inside):
        return None
    return math.prod(dims[a] for a, mixes in zip(axes, inside) if not mixes)


def product_channels(specs, output, index, axes, dims):
    """How a two-operand product (an `Einsum`, a batched matmul) carries the
    channels of operand `index`.

    `specs` are the operands' letter strings and `output` the result's (as
    in `"btnh,bsnh->bnts"`), `axes` the operand's channel axes and `dims` its
    shape. Letters of the channel axes that the other operand shares must
    be batch letters (kept in the output, as the heads of attention), and
    come before the others: each head's channels stay in their segment.

    Returns `(output axes, heads)` or a string saying why it cannot.

    >>> product_channels(["bnts", "bsnh"], "btnh", 1, (2, 3), (2, 16, 4, 8))
    ((2, 3), 4)
    """
    letters = [specs[index][a] for a in axes]
    other = specs[1 - index]
    if any(letter not in output for letter in letters):
        return "contracts its channels"
    shared = [letter in other for letter in letters]
    if all(shared):
        return "pairs every channel with the other operand"
    if shared != sorted(shared, reverse=True):
        return "interleaves heads with channels"
    heads = math.prod(dims[a] for a, s in zip(axes, shared) if s)
    return tuple(output.index(letter) for letter in letters), heads


def einsum_specs(equation):
    """`"BTNH,BSNH->BNTS"` -> `(["BTNH", "BSNH"], "BNTS")`, or None when the
    equation is not a plain product of two operands (an ellipsis, a
    repeated letter)."""
    text = equation.decode() if isinstance(equation, bytes) else str(equation)
    if "." in text or "->" not in text:
        return None
    inputs, output = text.replace(" ", "").split("->")
    specs = inputs.split(",")
    if len(specs) != 2 or any(len(set(s)) != len(s) for s in (*specs, output)):
        return None
    return specs, output


def matmul_specs(rank, adjoint_a, adjoint_b):
    """Letters of a batched matmul of two rank-`rank` operands:
    `(["...ij", "...jk"], "...ik")`, the adjoints' last two swapped."""
    batch = "abcdefgh"[: rank - 2]
    a = batch + ("ji" if adjoint_a else "ij")
    b = batch + ("kj" if adjoint_b else "jk")
    return [a, b], batch + "ik"


def _index(value, dim):
    value = int(value)
    return value + dim if value < 0 else value


# Reading traced ops and tensors ---------------------------------------------


def static_dims(tensor):
    """A tensor's static shape as a tuple of ints, or None if not fully known."""
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape):
        return None
    return tuple(int(d) for d in shape)


def operand_axes(operand, result, axes):
    """The axes of a broadcast operand that meet `result`'s channel `axes`:
    None when it is the same for every channel (size 1 there), () when it
    broadcasts along some channel axes but not all."""
    offset = result.shape.rank - operand.shape.rank
    dims, result_dims = static_dims(operand), static_dims(result)
    moved = tuple(a - offset for a in axes)
    sizes = [dims[a] if a >= 0 else 1 for a in moved]
    if all(size == 1 for size in sizes):
        return None
    if sizes != [result_dims[a] for a in axes]:
        return ()
    return moved


def kept_by_slice(op, dims):
    """Input axis -> output axis of the axes a `Slice` or `StridedSlice` op
    keeps whole, or None when its bounds are not static."""
    if op.type == "Slice":
        begin, size = (tf.get_static_value(t) for t in op.inputs[1:3])
        if begin is None or size is None:
            return None
        return {a: a for a, d in enumerate(dims) if begin[a] == 0 and size[a] in (-1, d)}
    begin, end, strides = (tf.get_static_value(t) for t in op.inputs[1:4])
    if begin is None or end is None or strides is None:
        return None
    names = ("begin_mask", "end_mask", "shrink_axis_mask", "ellipsis_mask", "new_axis_mask")
    masks = {name: op.get_attr(name) for name in names}
    return kept_axes_of_slice(len(dims), begin, end, strides, masks, dims)
