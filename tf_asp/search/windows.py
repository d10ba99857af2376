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
        raise ValueError(
            f"A stripe-group window must be 4, 8, 12 or 16 columns; got {window}."
        )
    quads = list(itertools.combinations(range(window), 4))
    index = {quad: i for i, quad in enumerate(quads)}
    memo = {}

    def partitions(positions):
        if len(positions) == 4:
            return np.array([[index[positions]]], dtype=np.int32)
        if positions not in memo:
            first, rest = positions[0], positions[1:]
            blocks = []
            for others in itertools.combinations(rest, 3):
                remaining = tuple(p for p in rest if p not in others)
                tails = partitions(remaining)
                head = np.full((len(tails), 1), index[(first,) + others], np.int32)
                blocks.append(np.hstack([head, tails]))
            memo[positions] = np.concatenate(blocks)
        return memo[positions]

    table = partitions(tuple(range(window)))
    return np.asarray(quads, dtype=np.int32), np.ascontiguousarray(table)
