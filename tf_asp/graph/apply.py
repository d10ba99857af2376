"""Applies one channel permutation per group to a model's variables.

`permutation[j]` is the old channel that becomes channel `j` of the group; it
maps every segment of the group onto itself (`check_permutation`). Each
`Placement` says which axes of a variable hold which channels: consumers'
kernels along their input axes (C), producers' kernels and embedding tables
along their output axes (K), vectors and depthwise kernels along their
channel axis; several axes (an attention kernel's heads and head_dim) are
permuted as one, flattened. The new values are all computed first and
written together, so a failure leaves the model as it was.

```python
values = permuted_values(groups, {group.id: permutation})
originals = assign(values)      # returns the old values, to restore
assign(originals)               # back to the original weights
```
"""

import math

import numpy as np


def permuted_values(groups, permutations):
    """The new value of every variable the permutations touch.

    Args:
        groups: the `Group`s to permute.
        permutations: a dict from group id to an int array of the group's
            channels (groups missing from it are left alone).

    Returns:
        A dict from `id(variable)` to `(variable, new_value)`.
    """
    indices = {}  # (id(variable), axes) -> (variable, axes, index along the flattened axes)
    for group in groups:
        permutation = permutations.get(group.id)
        if permutation is None:
            continue
        permutation = check_permutation(permutation, group.segments)
        for placement in group.placements:
            key = (id(placement.variable), placement.axes)
            if key not in indices:
                size = math.prod(int(placement.variable.shape[a]) for a in placement.axes)
                indices[key] = (placement.variable, placement.axes, np.arange(size))
            start, size, offset = placement.start, placement.size, placement.offset
            moved = permutation[start : start + size] - start + offset
            indices[key][2][offset : offset + size] = moved

    values = {}
    for variable, axes, index in indices.values():
        value = values[id(variable)][1] if id(variable) in values else variable.numpy()
        values[id(variable)] = (variable, take(value, index, axes))
    return values


def take(value, index, axes):
    """`value` with its `axes` (flattened row-major, in that order) indexed by `index`.

    >>> take(np.arange(8).reshape(2, 4), [1, 0, 2, 3], (1,))[0]
    array([1, 0, 2, 3])
    """
    value = np.asarray(value)
    rest = [a for a in range(value.ndim) if a not in axes]
    moved = value.transpose(list(axes) + rest)
    flat = moved.reshape((-1,) + moved.shape[len(axes) :])
    taken = flat[np.asarray(index)].reshape(moved.shape)
    return taken.transpose(np.argsort(list(axes) + rest))


def check_permutation(permutation, segments):
    """`permutation` as int64, if it permutes each `(start, size)` segment
    within itself (a ValueError otherwise)."""
    permutation = np.asarray(permutation, dtype=np.int64)
    channels = sum(size for _, size in segments)
    valid = permutation.shape == (channels,)
    for start, size in segments if valid else ():
        part = permutation[start : start + size]
        valid = valid and np.array_equal(np.sort(part), np.arange(start, start + size))
    if not valid:
        shown = permutation.ravel().tolist()
        raise ValueError(
            f"Expected a permutation of {channels} channels that keeps each segment "
            f"({', '.join(f'{s}:{s + n}' for s, n in segments)}) in place, got "
            f"{shown[:16]}{'...' if len(shown) > 16 else ''}."
        )
    return permutation


def identity(segments):
    """The permutation that moves nothing."""
    return np.arange(sum(size for _, size in segments))


def assign(values):
    """Writes `{id: (variable, value)}`; returns the previous values."""
    previous = {key: (v, v.numpy()) for key, (v, _) in values.items()}
    for variable, value in values.values():
        variable.assign(value)
    return previous
