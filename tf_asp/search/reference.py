"""The NumPy reference of the search kernels (and the fallback backend).

`ReferenceSearch` computes exactly what `kernels/structured_sparsity.h`
specifies, vectorized over groups and rows: the native CPU and CUDA
libraries must agree with it bit for bit.

```python
search = ReferenceSearch(quantize(matrix), window=8)             # 2:4
improvements, best = search.stripe_groups(permutation, groups)
search = ReferenceSearch(quantize(matrix), window=16, pattern="4:8")
```
"""

import numpy as np

from tf_asp.patterns import DEFAULT_PATTERN
from tf_asp.patterns import parse_pattern
from tf_asp.search.metrics import stripe_kept
from tf_asp.search.windows import window_tables

# Elements gathered per vectorized step: bounds the memory of one step.
CHUNK_ELEMENTS = 1 << 23


class ReferenceSearch:
    """A search's data and its two kernels, in NumPy.

    Args:
        magnitudes: quantized magnitudes, int32 of shape (C, rows).
        window: columns per stripe group, or 0 for column swaps only.
        tables: `(subsets, partitions)` of `window` if already made.
        pattern: the N:M pattern whose stripes (M columns) are scored.
    """

    backend = "numpy"

    def __init__(self, magnitudes, window=0, tables=None, pattern=DEFAULT_PATTERN):
        self.magnitudes = np.ascontiguousarray(magnitudes, dtype=np.int32)
        self.pattern = parse_pattern(pattern)
        self.window = window
        if window:
            self.subsets, self.partitions = (
                tables if tables is not None else window_tables(window, self.pattern.m)
            )

    def _scores(self, stripes):
        """Exact scores of stripes of shape (..., m, rows)."""
        return stripe_kept(np.moveaxis(stripes, -2, -1), self.pattern).sum(-1, dtype=np.int64)

    def stripe_groups(self, permutation, groups):
        """Best partition per stripe group and its gain over the identity."""
        permutation = np.asarray(permutation)
        groups = np.asarray(groups)
        rows = self.magnitudes.shape[1]
        m = self.pattern.m
        improvements = np.empty(len(groups), np.int64)
        best = np.empty(len(groups), np.int32)
        per_group = max(self.subsets.size * rows, self.partitions.size)
        step = max(1, CHUNK_ELEMENTS // per_group)
        for first in range(0, len(groups), step):
            chunk = groups[first : first + step]
            positions = (m * chunk[:, :, None] + np.arange(m)).reshape(len(chunk), -1)
            columns = permutation[positions][:, self.subsets]  # (n, Q, m)
            subset_scores = self._scores(self.magnitudes[columns])  # from (n, Q, m, rows)
            scores = self._partition_scores(subset_scores)
            best[first : first + step] = np.argmax(scores, axis=1)
            improvements[first : first + step] = scores.max(axis=1) - scores[:, 0]
        return improvements, best

    def _partition_scores(self, subset_scores):
        scores = np.zeros((len(subset_scores), len(self.partitions)), np.int64)
        for k in range(self.partitions.shape[1]):
            scores += subset_scores[:, self.partitions[:, k]]
        return scores

    def column_swaps(self, permutation, positions):
        """Gain of swapping each of `positions` with every column (C wide)."""
        permutation = np.asarray(permutation)
        positions = np.asarray(positions)
        cols, rows = self.magnitudes.shape
        m = self.pattern.m
        stripes = self.magnitudes[permutation].reshape(cols // m, m, rows)
        scores = self._scores(stripes)
        improvements = np.zeros((len(positions), cols), np.int64)
        others = np.arange(cols)
        for i, p in enumerate(positions):
            mine = np.repeat(stripes[p // m][None], cols, axis=0)  # (C, m, rows)
            theirs = stripes[others // m].copy()
            mine[others, p % m] = stripes[others // m, others % m]
            theirs[others, others % m] = stripes[p // m, p % m]
            gain = self._scores(mine) + self._scores(theirs) - scores[p // m] - scores[others // m]
            gain[others // m == p // m] = 0
            improvements[i] = gain
        return improvements

    def close(self):
        pass
