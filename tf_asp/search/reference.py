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
        """Gain of swapping each of `positions` with every column (C wide).

        A swap changes each of its two stripes by one value a row, and what
        that does to a row follows from the row's n-th and (n+1)-th largest
        values: a leaving value among the n largest gives way to the (n+1)-th
        (`lost`), and an arriving value above the n-th largest of those left
        (`threshold`) displaces it.
        """
        permutation = np.asarray(permutation)
        cols, rows = self.magnitudes.shape
        n, m = self.pattern.n, self.pattern.m
        values = self.magnitudes[permutation]  # (C, rows), by position
        ordered = np.sort(values.reshape(cols // m, m, rows), axis=1)
        nth = np.repeat(ordered[:, m - n], m, axis=0)  # of each position's stripe
        next_ = np.repeat(ordered[:, m - n - 1], m, axis=0)
        kept = values >= nth
        lost = np.where(kept, next_ - values, 0)  # when the value at a position leaves
        threshold = np.where(kept, next_, nth)  # what an arriving value must beat there
        stripe_of = np.arange(cols) // m
        improvements = np.zeros((len(positions), cols), np.int64)
        for i, p in enumerate(np.asarray(positions)):
            gain = (
                lost[p]
                + np.maximum(values - threshold[p], 0)  # p's stripe takes each column
                + lost
                + np.maximum(values[p] - threshold, 0)  # each column's stripe takes p
            )
            improvements[i] = np.where(stripe_of == stripe_of[p], 0, gain.sum(-1, dtype=np.int64))
        return improvements

    def close(self):
        pass
