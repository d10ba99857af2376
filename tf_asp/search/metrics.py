"""What an N:M mask keeps of a matrix, the bound a permutation cannot beat,
and the efficacy of a permutation (docs/design.md: "Conventions", for any pattern).

A matrix has one row per output value and one column per input channel; an
N:M mask keeps, in every row, the N largest magnitudes of each M consecutive
columns (a *stripe*). Every function takes the pattern (default 2:4) as
`"N:M"`, an `(n, m)` pair or a `tf_asp.patterns.Pattern`. All are vectorized.

```python
m = np.random.RandomState(1).rand(128, 64)
kept_magnitude(m)            # 2852.377: the default order, 2:4
row_bound_magnitude(m)       # 3042.332: each row keeps its largest half
efficacy(2919.759, kept_magnitude(m), row_bound_magnitude(m))   # 35.5
kept_magnitude(m, pattern="4:8"), row_bound_magnitude(m, "4:8")
```
"""

import numpy as np

from tf_asp.patterns import DEFAULT_PATTERN
from tf_asp.patterns import TWO_FOUR
from tf_asp.patterns import parse_pattern

# Quantized magnitudes are at most this (the kernels' SS_MAX_MAGNITUDE),
# whatever the pattern: the kernels size their 32-bit row blocks to N.
MAX_QUANTIZED = 1 << 22


def check_matrix(matrix, name="matrix", pattern=DEFAULT_PATTERN):
    """`matrix` as a float64 (rows, C) array, or a ValueError saying why not."""
    pattern = parse_pattern(pattern)
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
    if array.shape[1] % pattern.m:
        raise ValueError(
            f"The {name} has {array.shape[1]} columns; {pattern} sparsity needs a multiple "
            f"of {pattern.m}."
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


def stripe_kept(values, pattern=DEFAULT_PATTERN):
    """Sum of the N largest of the M entries of the last axis (a stripe's row)."""
    pattern = parse_pattern(pattern)
    if pattern == TWO_FOUR:
        return stripe_top2(values)
    if pattern.n == 1:
        return values.max(axis=-1)
    return np.sort(values, axis=-1)[..., pattern.m - pattern.n :].sum(axis=-1)


def kept_magnitude(matrix, permutation=None, pattern=DEFAULT_PATTERN):
    """Sum of |w| that an N:M mask keeps, columns optionally permuted first."""
    pattern = parse_pattern(pattern)
    magnitudes = np.abs(np.asarray(matrix, dtype=np.float64))
    if permutation is not None:
        magnitudes = magnitudes[:, np.asarray(permutation)]
    rows, cols = magnitudes.shape
    stripes = magnitudes.reshape(rows, cols // pattern.m, pattern.m)
    return float(stripe_kept(stripes, pattern).sum())


def row_bound_magnitude(matrix, pattern=DEFAULT_PATTERN):
    """Upper bound of any permutation: each row keeps its largest N/M fraction
    (`pattern.kept(C)` of its C entries), wherever they are."""
    pattern = parse_pattern(pattern)
    magnitudes = np.abs(np.asarray(matrix, dtype=np.float64))
    dropped = magnitudes.shape[1] - pattern.kept(magnitudes.shape[1])
    return float(np.sort(magnitudes, axis=1)[:, dropped:].sum())


def rows_half_magnitude(matrix):
    """The 2:4 (and 1:2) bound: each row keeps its largest half."""
    return row_bound_magnitude(matrix, TWO_FOUR)


def unstructured_magnitude(matrix, sparsity=0.5):
    """Sum of |w| kept when the smallest `sparsity` fraction of all is pruned."""
    magnitudes = np.sort(np.abs(np.asarray(matrix, dtype=np.float64)), axis=None)
    return float(magnitudes[int(round(sparsity * magnitudes.size)) :].sum())


def efficacy(kept, identity_kept, bound):
    """100 * (kept - identity) / (bound - identity); 0 when there is no room.

    The three magnitudes come from the same pattern's `kept_magnitude` and
    `row_bound_magnitude`; `permutation_efficacy` computes them all.
    """
    room = bound - identity_kept
    return 0.0 if room <= 0 else 100.0 * (kept - identity_kept) / room


def permutation_efficacy(matrix, permutation, pattern=DEFAULT_PATTERN):
    """The efficacy of a column order of `matrix` for `pattern`.

    ```python
    permutation_efficacy(m, result.permutation, "2:4")   # == result.efficacy
    ```
    """
    return efficacy(
        kept_magnitude(matrix, permutation, pattern),
        kept_magnitude(matrix, None, pattern),
        row_bound_magnitude(matrix, pattern),
    )


def quantize(matrix):
    """|matrix| as int32 in [0, MAX_QUANTIZED], column-major: shape (C, rows).

    The kernels add these exactly in int64, so every backend computes the
    same scores whatever its summation order, and makes the same choices.
    The scale does not depend on the pattern.
    """
    magnitudes = np.abs(np.asarray(matrix, dtype=np.float64))
    largest = magnitudes.max()
    scale = MAX_QUANTIZED / largest if largest > 0 else 0.0
    return np.ascontiguousarray(np.rint(magnitudes * scale).astype(np.int32).T)


def quantized_score(magnitudes, permutation, pattern=DEFAULT_PATTERN):
    """The kernels' score of a permutation: `kept_magnitude` on quantized data."""
    pattern = parse_pattern(pattern)
    columns = magnitudes[np.asarray(permutation)]
    stripes = columns.reshape(-1, pattern.m, columns.shape[1]).transpose(0, 2, 1)
    return int(stripe_kept(stripes, pattern).sum(dtype=np.int64))
