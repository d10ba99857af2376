"""The kernels an ONNX model multiplies by, in the layout of the other reports.

Every initializer that feeds the weight input of a `Conv`, `MatMul` or `Gemm`
node (directly, or through `Identity` or `Cast`) is a kernel, brought to the
GEMM layout of `tf_asp.report.served` (input channels on axis -2):

* `Conv` weights `(K, C, kH, kW)` become `(kH, kW, C, K)`, a Keras `Conv2D`
  kernel (for a grouped convolution `C` is the channels per group);
  depthwise convolutions (one input channel per group) are skipped, as
  TensorFlow's `DepthwiseConv2dNative` is;
* `MatMul`'s B operand is `(C, K)` already;
* `Gemm`'s B operand is `(C, K)`, or `(K, C)` when `transB=1`.

```python
for kernel in onnx_kernels(load_onnx("model.onnx")):
    print(kernel.name, kernel.node, kernel.weights.shape)
```
"""

import os

import numpy as np

from tf_asp.report.served import ServedKernel

ONNX_MISSING = (
    "Reading ONNX files needs the onnx package, which is not installed; "
    "install it with `pip install 'tf_asp[onnx]'`."
)
_PASS_THROUGH = ("Identity", "Cast")


def load_onnx(path):
    """Loads the ONNX model at `path`, or says in one sentence why it can't.

    Raises:
        FileNotFoundError: nothing is at `path`.
        ValueError: `path` is not an ONNX model.
        ImportError: the onnx package is not installed.
    """
    try:
        import onnx
    except ImportError as error:
        raise ImportError(ONNX_MISSING) from error

    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No ONNX model at '{path}': the path does not exist; export one with "
            f"`python -m tf_asp.export MODEL --onnx {path}` first."
        )
    try:
        model = onnx.load(path)
    except Exception:  # a directory, a truncated file, or not protobuf at all
        model = None
    if model is None or not model.ir_version or not model.graph.node:
        raise ValueError(
            f"'{path}' is not an ONNX model (onnx cannot read a graph from it); "
            "pass a file written by `python -m tf_asp.export MODEL --onnx OUT.onnx`."
        )
    return model


def onnx_kernels(model):
    """The weights the `Conv`, `MatMul` and `Gemm` nodes of `model` multiply by.

    Args:
        model: an `onnx.ModelProto` (see `load_onnx`).

    Returns:
        A list of `ServedKernel(name, node, weights)` in node order, one per
        initializer: `name` is the initializer's, `node` the first node that
        multiplies by it, `weights` its values in GEMM layout.
    """
    from onnx import helper
    from onnx import numpy_helper

    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    kernels = {}
    for index, node in enumerate(graph.node):
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        name, dtype = node.input[1], None
        while name in producers and producers[name].op_type in _PASS_THROUGH:
            producer = producers[name]
            if producer.op_type == "Cast" and dtype is None:
                dtype = helper.tensor_dtype_to_np_dtype(_attribute(producer, "to"))
            name = producer.input[0]
        if name not in constants or name in kernels:
            continue
        weights = numpy_helper.to_array(constants[name])
        weights = _gemm_layout(node, weights if dtype is None else weights.astype(dtype))
        if weights is not None and np.issubdtype(weights.dtype, np.floating):
            kernels[name] = ServedKernel(name, node.name or f"{node.op_type} #{index}", weights)
    return list(kernels.values())


def _gemm_layout(node, weights):
    """`weights` in GEMM layout (input channels on axis -2), or None to skip."""
    if weights.ndim < 2:
        return None
    if node.op_type == "Conv":
        if _attribute(node, "group", 1) > 1 and weights.shape[1] == 1:
            return None  # depthwise
        return np.transpose(weights, (*range(2, weights.ndim), 1, 0))
    if node.op_type == "Gemm" and _attribute(node, "transB", 0):
        return weights.T
    return weights


def _attribute(node, name, default=None):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default
