"""Graph-level channel permutation.

Before pruning, tf_asp permutes the input channels of each prunable kernel so
that its 2:4 mask keeps more weight magnitude, and permutes the output
channels of the kernels (and the per-channel variables) that produce those
inputs, so the model still computes the same function:

```python
summary = tf_asp.graph.permute_model(model)
print(summary)
```

The pipeline, one module each: `trace` (model -> op graph), `oplists` (which
ops carry a permutation), `axes` (where an op moves the channel axes),
`spaces` (channel spaces, their concatenations and pins), `walk` (ops ->
channel spaces), `groups` (which kernels share one permutation), `apply`
(write the permuted weights), `verify` (the batch and the comparison),
`permute` (search, apply, verify, report) and `plot`.
"""

from tf_asp.graph.oplists import ALLOW_OPS
from tf_asp.graph.oplists import CLEAR_OPS
from tf_asp.graph.oplists import INFER_OPS
from tf_asp.graph.oplists import SKIP_OPS
from tf_asp.graph.permute import GroupResult
from tf_asp.graph.permute import PermutationError
from tf_asp.graph.permute import PermutationSummary
from tf_asp.graph.permute import SkippedGroup
from tf_asp.graph.permute import permute_model

__all__ = [
    "ALLOW_OPS",
    "CLEAR_OPS",
    "INFER_OPS",
    "SKIP_OPS",
    "GroupResult",
    "PermutationError",
    "PermutationSummary",
    "SkippedGroup",
    "permute_model",
]
