"""The NumPy reference of the search kernels (and the fallback backend).

`ReferenceSearch` computes exactly what `kernels/structured_sparsity.h`
specifies, vectorized over groups and rows: the native CPU and CUDA
libraries must agree with it bit for bit.

```python
search = ReferenceSearch(quantize(matrix), window=8)
improvements, best = search.stripe_groups(permutation, groups)
```
"""

import numpy as np

from tf_asp.search.metrics import stripe_top2
from tf_asp.search.windows import window_tables

# Elements gathered per vectorized step: bounds the memory of one step.
CHUNK_ELEMENTS = 1 << 23


class ReferenceSearch:
    """A search's data and its two kernels, in NumPy.

    Args:
        magnitudes: quantized magnitudes, int32 of shape (C, rows).
        window: columns per stripe group, or 0 for column swaps only.
        tables: `(quads, partitions)` of `window` if already made.
    """

    backend = "numpy"

    def __init__(self, magnitudes, window=0, tables=None):
        self.magnitudes = np.ascontiguousarray(magnitudes, dtype=np.int32)
        self.window = window
        if window:
            self.quads, self.partitions = tables if tables is not None else window_tables(window)

    def stripe_groups(self, permutation, groups):
        """Best partition per stripe group and its gain over the identity."""
        permutation = np.asarray(permutation)
        groups = np.asarray(groups)
        rows = self.magnitudes.shape[1]
        offsets = np.arange(4)
        improvements = np.empty(len(groups), np.int64)
        best = np.empty(len(groups), np.int32)
        per_group = max(self.quads.size * rows, self.partitions.size)
        step = max(1, CHUNK_ELEMENTS // per_group)
        for first in range(0, len(groups), step):
            chunk = groups[first : first + step]
            positions = (4 * chunk[:, :, None] + offsets).reshape(len(chunk), -1)
            columns = permutation[positions][:, self.quads]  # (n, Q, 4)
            values = self.magnitudes[columns]  # (n, Q, 4, rows)
            quad_scores = stripe_top2(np.moveaxis(values, 2, -1)).sum(-1, dtype=np.int64)
            scores = self._partition_scores(quad_scores)
            best[first : first + step] = np.argmax(scores, axis=1)
            improvements[first : first + step] = scores.max(axis=1) - scores[:, 0]
        return improvements, best

    def _partition_scores(self, quad_scores):
        scores = np.zeros((len(quad_scores), len(self.partitions)), np.int64)
        for k in range(self.partitions.shape[1]):
            scores += quad_scores[:, self.partitions[:, k]]
        return scores

    def column_swaps(self, permutation, positions):
        """Gain of swapping each of `positions` with every column (C wide)."""
        permutation = np.asarray(permutation)
        positions = np.asarray(positions)
        cols, rows = self.magnitudes.shape
        stripes = self.magnitudes[permutation].reshape(cols // 4, 4, rows)
        scores = stripe_top2(np.moveaxis(stripes, 1, -1)).sum(-1, dtype=np.int64)
        improvements = np.zeros((len(positions), cols), np.int64)
        others = np.arange(cols)
        for i, p in enumerate(positions):
            mine = np.repeat(stripes[p // 4][None], cols, axis=0)  # (C, 4, rows)
            theirs = stripes[others // 4].copy()
            mine[others, p % 4] = stripes[others // 4, others % 4]
            theirs[others, others % 4] = stripes[p // 4, p % 4]
            gain = (
                stripe_top2(np.moveaxis(mine, 1, -1)).sum(-1, dtype=np.int64)
                + stripe_top2(np.moveaxis(theirs, 1, -1)).sum(-1, dtype=np.int64)
                - scores[p // 4]
                - scores[others // 4]
            )
            gain[others // 4 == p // 4] = 0
            improvements[i] = gain
        return improvements

    def close(self):
        pass
