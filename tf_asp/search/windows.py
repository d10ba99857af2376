"""The arrangements of a stripe group that are worth scoring, per pattern.

A window of `w` columns holds `w / m` stripes of `m` columns (M of an N:M
pattern). It can be split into stripes in `w! / (m!^(w/m) (w/m)!)` distinct
ways: the order of columns within a stripe and the order of stripes do not
change what an N:M mask keeps. Each split is a *partition* of the window
positions into m-subsets (*subsets*, the candidate stripes).

| m | windows (columns)         | partitions              |
|---|---------------------------|-------------------------|
| 2 | 8, 12, 16                 | 105, 10395, 2027025     |
| 4 | 8, 12, 16                 | 35, 5775, 2627625       |
| 8 | 16                        | 6435                    |

Both tables are in canonical order: subsets lexicographic, and partitions
lexicographic in their subsets, each partition's subsets sorted by first
position. Partition 0 is the identity (positions 0..m-1, m..2m-1, ...).

```python
subsets, partitions = window_tables(8)          # 2:4's stripes of 4
subsets.shape, partitions.shape                 # (70, 4), (35, 2)
window_tables(16, m=8)[1].shape                 # (6435, 2)
```
"""

import itertools
import math

import numpy as np

# Stripe-group windows per stripe width m. M = 16 has none: its smallest
# window, 32 columns, has about 3e8 partitions (channel_swap searches it).
WINDOWS = {2: (8, 12, 16), 4: (8, 12, 16), 8: (16,), 16: ()}
# Widest window with a table (the exhaustive search's limit).
MAX_WINDOW = 16


def partition_count(window, m=4):
    """Distinct splits of `window` columns into stripes of `m`."""
    stripes = window // m
    return math.factorial(window) // (math.factorial(m) ** stripes * math.factorial(stripes))


def window_tables(window, m=4):
    """`(subsets, partitions)`: int32 arrays of shapes (Q, m) and (P, window/m).

    `window` is any multiple of `m` up to 16 (a strategy narrows this to
    `WINDOWS[m]`, or to a narrow matrix's width).
    """
    if m not in WINDOWS:
        raise ValueError(f"A stripe is 2, 4, 8 or 16 columns wide; got {m}.")
    if window % m or not m <= window <= MAX_WINDOW:
        listed = ", ".join(map(str, range(m, MAX_WINDOW + 1, m)))
        listed = " or ".join(listed.rsplit(", ", 1)) if m < MAX_WINDOW else listed
        raise ValueError(
            f"A stripe-group window must be {listed} columns for stripes of {m}; got {window}."
        )
    subsets = np.array(list(itertools.combinations(range(window), m)), dtype=np.int32)
    subset_index = np.zeros(1 << window, dtype=np.int32)  # by the subset's bit mask
    subset_index[_masks(subsets)] = np.arange(len(subsets))
    partitions = subset_index[_masks(_splits(window, m))]
    return subsets, np.ascontiguousarray(partitions)


def _masks(positions):
    """The bit masks of the subsets along the last axis of `positions`."""
    bits = np.left_shift(1, np.arange(MAX_WINDOW), dtype=np.int32)[positions]
    masks = bits[..., 0].copy()
    for k in range(1, bits.shape[-1]):
        masks |= bits[..., k]
    return masks


def _splits(count, m):
    """Every split of positions 0..count-1 into sorted m-subsets, as an array
    (P, count/m, m), canonical order: position 0's subset is first, its
    partners in lexicographic order, the rest split the same way."""
    if count == m:
        return np.arange(m, dtype=np.int8).reshape(1, 1, m)
    rest = _splits(count - m, m)  # splits of the remaining positions, relabelled
    blocks = []
    for partners in itertools.combinations(range(1, count), m - 1):
        first = np.array((0,) + partners, dtype=np.int8)
        remaining = np.setdiff1d(np.arange(count, dtype=np.int8), first)
        head = np.broadcast_to(first, (len(rest), 1, m))
        blocks.append(np.concatenate([head, remaining[rest]], axis=1))
    return np.concatenate(blocks)
