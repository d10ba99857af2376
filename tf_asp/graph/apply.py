"""Applies one channel permutation per group to a model's variables.

`permutation[j]` is the old channel that becomes channel `j`: consumers'
kernels are C-permuted (`np.take(kernel, permutation, axis=-2)`), producers'
kernels K-permuted (`axis=-1`), per-channel vectors and depthwise kernels with
them. The new values are all computed first and written together, so a
failure leaves the model as it was.

```python
values = permuted_values(groups, {group.id: permutation})
originals = assign(values)      # returns the old values, to restore
assign(originals)               # back to the original weights
```
"""

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
    values = {}

    def take(variable, permutation, axis):
        key = id(variable)
        if key not in values:
            values[key] = (variable, variable.numpy())
        values[key] = (variable, np.take(values[key][1], permutation, axis=axis))

    for group in groups:
        permutation = permutations.get(group.id)
        if permutation is None:
            continue
        permutation = check_permutation(permutation, group.channels)
        for kernel in group.consumers:
            take(kernel.variable, permutation, -2)
        for kernel in group.producers:
            take(kernel.variable, permutation, -1)
        for variable in group.vectors:
            take(variable, permutation, -1)
        for variable, axis in group.depthwise:
            take(variable, permutation, axis)
    return values


def check_permutation(permutation, channels):
    """`permutation` as int64, if it is a permutation of `range(channels)`."""
    permutation = np.asarray(permutation, dtype=np.int64)
    if permutation.shape != (channels,) or not np.array_equal(
        np.sort(permutation), np.arange(channels)
    ):
        raise ValueError(
            f"Expected a permutation of {channels} channels, got "
            f"{permutation.tolist()[:16]}{'...' if permutation.size > 16 else ''}."
        )
    return permutation


def assign(values):
    """Writes `{id: (variable, value)}`; returns the previous values."""
    previous = {key: (v, v.numpy()) for key, (v, _) in values.items()}
    for variable, value in values.values():
        variable.assign(value)
    return previous
