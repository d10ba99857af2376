"""The arrangements of a stripe group that are worth scoring.

A window of `w` columns (`w / 4` stripes) can be split into stripes in
`w! / (4!^(w/4) (w/4)!)` distinct ways: the order of columns within a stripe
and the order of stripes do not change what a 2:4 mask keeps. Each split is a
*partition* of the window positions into 4-subsets (*quads*): 35 for a window
of 8, 5775 for 12, 2627625 for 16.

Both tables are in canonical order: quads lexicographic, and partitions
lexicographic in their quads, each partition's quads sorted by first
position. Partition 0 is the identity (positions 0-3, 4-7, ...).

```python
quads, partitions = window_tables(8)
quads.shape, partitions.shape     # (70, 4), (35, 2)
```
"""

import itertools
import math

import numpy as np

WINDOWS = (8, 12, 16)
MAX_WINDOW = 16


def partition_count(window):
    stripes = window // 4
    return math.factorial(window) // (math.factorial(4) ** stripes * math.factorial(stripes))


def window_tables(window):
    """`(quads, partitions)`: int32 arrays of shapes (Q, 4) and (P, window/4)."""
    if window % 4 or not 4 <= window <= MAX_WINDOW:
        raise ValueError(f"A stripe-group window must be 4, 8, 12 or 16 columns; got {window}.")
    quads = np.array(list(itertools.combinations(range(window), 4)), dtype=np.int32)
    quad_index = np.zeros((window,) * 4, dtype=np.int32)
    quad_index[tuple(quads.T)] = np.arange(len(quads))
    splits = _splits(window)  # (P, window/4, 4) positions
    partitions = quad_index[splits[..., 0], splits[..., 1], splits[..., 2], splits[..., 3]]
    return quads, np.ascontiguousarray(partitions)


def _splits(count):
    """Every split of positions 0..count-1 into sorted quads, as an array
    (P, count/4, 4), canonical order: position 0's quad is first, its
    partners in lexicographic order, the rest split the same way."""
    if count == 4:
        return np.arange(4, dtype=np.int8).reshape(1, 1, 4)
    rest = _splits(count - 4)  # splits of the remaining positions, relabelled
    blocks = []
    for partners in itertools.combinations(range(1, count), 3):
        first = np.array((0,) + partners, dtype=np.int8)
        remaining = np.setdiff1d(np.arange(count, dtype=np.int8), first)
        head = np.broadcast_to(first, (len(rest), 1, 4))
        blocks.append(np.concatenate([head, remaining[rest]], axis=1))
    return np.concatenate(blocks)
