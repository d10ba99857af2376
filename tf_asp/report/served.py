"""A served weight in its GEMM view: the matrix a MatMul or convolution multiplies by.

Serving runs every prunable kernel as a GEMM whose weight has the input
channels on axis -2 and the outputs on axis -1: `(C, K)` for a matrix product
and `(H, W, C, K)` for a 2-D convolution filter. Both report sources, a
TensorFlow serving function (`tf_asp.report.serving_graph`) and an ONNX file
(`tf_asp.report.onnx`), bring their weights to this layout, so one model gives
the same rows whichever form it is in:

```python
rows = kernel_rows(onnx_kernels("model.onnx"))
```
"""

from typing import NamedTuple

import numpy as np

from tf_asp.report import _row
from tf_asp.report import _shape_reason


class ServedKernel(NamedTuple):
    """One weight that a GEMM of the served graph multiplies by.

    Attributes:
        name: the variable's path (TensorFlow) or the initializer's name (ONNX).
        node: the op or node that multiplies by it.
        weights: its values in GEMM layout, input channels on axis -2.
    """

    name: str
    node: str
    weights: np.ndarray


def kernel_rows(kernels, pattern="2:4"):
    """The report rows (`KernelSparsity`) of some `ServedKernel`s, in order,
    checked for the N:M `pattern`."""
    return tuple(
        _row(kernel.name, kernel.weights, _shape_reason(kernel.weights.shape), pattern=pattern)
        for kernel in kernels
    )
