"""What a 2:4 mask keeps of a matrix, the bound a permutation cannot beat,
and the efficacy of a permutation (docs/design.md: "Conventions").

A matrix has one row per output value and one column per input channel; a
2:4 mask keeps, in every row, the 2 largest magnitudes of each 4 consecutive
columns. All functions are vectorized.

```python
m = np.random.RandomState(1).rand(128, 64)
kept_magnitude(m)            # 2852.377: the default order
rows_half_magnitude(m)       # 3042.332: each row keeps its largest half
efficacy(2919.759, kept_magnitude(m), rows_half_magnitude(m))   # 35.5
```
"""

import numpy as np

# Quantized magnitudes are at most this (the kernels' SS_MAX_MAGNITUDE).
MAX_QUANTIZED = 1 << 22


def check_matrix(matrix, name="matrix"):
    """`matrix` as a float64 (rows, C) array, or a ValueError saying why not."""
    array = np.asarray(matrix)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"The {name} must hold real numbers; got dtype {array.dtype}.")
    if array.ndim != 2:
        raise ValueError(
            f"The {name} must be 2-D (rows = outputs, columns = input channels); "
            f"got shape {array.shape}. Reshape a kernel first (see tf_asp.search.as_search_matrix)."
        )
    if array.size == 0:
        raise ValueError(f"The {name} is empty (shape {array.shape}).")
    if array.shape[1] % 4:
        raise ValueError(
            f"The {name} has {array.shape[1]} columns; 2:4 sparsity needs a multiple of 4."
        )
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"The {name} contains NaN or Inf; no permutation can be searched.")
    return array


def stripe_top2(values):
    """Sum of the 2 largest of the 4 entries of the last axis (no sorting)."""
    a, b, c, d = (values[..., i] for i in range(4))
    high_ab, low_ab = np.maximum(a, b), np.minimum(a, b)
    high_cd, low_cd = np.maximum(c, d), np.minimum(c, d)
    return np.maximum(high_ab, high_cd) + np.maximum(
        np.minimum(high_ab, high_cd), np.maximum(low_ab, low_cd)
    )


def kept_magnitude(matrix, permutation=None):
    """Sum of |w| that a 2:4 mask keeps, columns optionally permuted first."""
    magnitudes = np.abs(np.asarray(matrix, dtype=np.float64))
    if permutation is not None:
        magnitudes = magnitudes[:, np.asarray(permutation)]
    rows, cols = magnitudes.shape
    return float(stripe_top2(magnitudes.reshape(rows, cols // 4, 4)).sum())


def rows_half_magnitude(matrix):
    """Upper bound of any permutation: each row keeps its largest half."""
    magnitudes = np.abs(np.asarray(matrix, dtype=np.float64))
    half = magnitudes.shape[1] // 2
    return float(np.sort(magnitudes, axis=1)[:, half:].sum())


def unstructured_magnitude(matrix, sparsity=0.5):
    """Sum of |w| kept when the smallest `sparsity` fraction of all is pruned."""
    magnitudes = np.sort(np.abs(np.asarray(matrix, dtype=np.float64)), axis=None)
    return float(magnitudes[int(round(sparsity * magnitudes.size)) :].sum())


def efficacy(kept, identity_kept, bound):
    """100 * (kept - identity) / (bound - identity); 0 when there is no room."""
    room = bound - identity_kept
    return 0.0 if room <= 0 else 100.0 * (kept - identity_kept) / room


def quantize(matrix):
    """|matrix| as int32 in [0, MAX_QUANTIZED], column-major: shape (C, rows).

    The kernels add these exactly in int64, so every backend computes the
    same scores whatever its summation order, and makes the same choices.
    """
    magnitudes = np.abs(np.asarray(matrix, dtype=np.float64))
    largest = magnitudes.max()
    scale = MAX_QUANTIZED / largest if largest > 0 else 0.0
    return np.ascontiguousarray(np.rint(magnitudes * scale).astype(np.int32).T)


def quantized_score(magnitudes, permutation):
    """The kernels' score of a permutation: `kept_magnitude` on quantized data."""
    columns = magnitudes[np.asarray(permutation)]
    stripes = columns.reshape(-1, 4, columns.shape[1]).transpose(0, 2, 1)
    return int(stripe_top2(stripes).sum(dtype=np.int64))
