"""The kernels a TensorFlow serving function multiplies by, as serving sees them.

A Keras kernel is not always the matrix serving multiplies by:
`MultiHeadAttention` and `EinsumDense` reshape their 3-D kernels
`(C, heads, head_dim)` and `(heads, head_dim, K)` to 2-D before a
`MatMul`/`BatchMatMulV2`, and `Conv1D` expands its `(W, C, K)` kernel into a
`Conv2D` filter `(1, W, C, K)`. This module reads them from the function's
graph instead: it freezes the function with every nested call inlined (as
tf2onnx does before converting it), then follows each captured variable
through the ops that only change its layout (`Identity`, `Cast`, `Reshape`,
`ExpandDims`, `Squeeze`, `Transpose`) into the weight operand of a `MatMul`
or `BatchMatMulV2` (B, viewed `(C, K)`) or the filter of a `Conv2D`
(`(H, W, C, K)`):

```python
loaded = tf.saved_model.load("exported_model")
for kernel in function_kernels(loaded.signatures["serving_default"]):
    print(kernel.name, kernel.node, kernel.weights.shape)
```

A variable read by several GEMMs is listed once, in the view of the first.
"""

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import convert_to_constants

from tf_asp.report.served import ServedKernel

# Ops that change a weight's dtype or layout but not which values it holds.
_LAYOUT_OPS = ("Identity", "Cast", "Reshape", "ExpandDims", "Squeeze", "Transpose")
# GEMM op type -> the attribute that says its B operand is transposed.
_MATMUL_TRANSPOSE = {"MatMul": "transpose_b", "BatchMatMulV2": "adj_y", "BatchMatMulV3": "adj_y"}


def function_kernels(function):
    """The GEMM weights a concrete function multiplies by, one per variable.

    Args:
        function: a `tf.types.experimental.ConcreteFunction` that reads its
            weights from captured variables: a SavedModel signature, or a
            traced Keras model (`tf.function(model).get_concrete_function(spec)`).

    Returns:
        A list of `ServedKernel(name, node, weights)` in graph order: `name` is
        the variable's name (`"dense/kernel"`), `node` the op that multiplies
        by it, `weights` its values in GEMM layout (input channels on axis -2).
    """
    frozen = convert_to_constants.convert_variables_to_constants_v2(
        function, aggressive_inlining=True
    )
    names = _captured_variable_names(function)
    kernels = {}
    for op in frozen.graph.get_operations():
        if op.type != "Const" or op.name not in names or names[op.name] in kernels:
            continue
        value = tf.get_static_value(op.outputs[0])
        for node, weights in _gemm_views(op.outputs[0], value):
            kernels[names[op.name]] = ServedKernel(names[op.name], node, weights)
            break
    return list(kernels.values())


def _captured_variable_names(function):
    """Maps each captured variable's placeholder name to the variable's name.

    Freezing turns the placeholder of a captured variable into a Const of the
    same name; the placeholder and the variable's handle are paired by
    position in `internal_captures` and `captured_inputs`.
    """
    variables = {id(variable.handle): variable for variable in function.variables}
    names = {}
    for internal, external in zip(function.graph.internal_captures, function.captured_inputs):
        variable = variables.get(id(external))
        if variable is not None and variable.dtype.is_floating:
            names[internal.op.name] = variable.name.removesuffix(":0")
    return names


def _gemm_views(tensor, value):
    """Yields (op name, GEMM-layout weights) for each GEMM `tensor` feeds."""
    for consumer in tensor.consumers():
        reads = [index for index, read in enumerate(consumer.inputs) if read.name == tensor.name]
        if consumer.type in _LAYOUT_OPS and reads == [0]:
            output = consumer.outputs[0]
            if not output.shape.is_fully_defined():
                continue
            if consumer.type == "Transpose":
                viewed = np.transpose(value, tf.get_static_value(consumer.inputs[1]))
            else:
                viewed = value.reshape(output.shape.as_list())
            yield from _gemm_views(output, viewed.astype(output.dtype.as_numpy_dtype))
        elif consumer.type in _MATMUL_TRANSPOSE and reads == [1]:
            if value.ndim >= 2:
                transposed = consumer.get_attr(_MATMUL_TRANSPOSE[consumer.type])
                yield consumer.name, np.swapaxes(value, -1, -2) if transposed else value
        elif consumer.type == "Conv2D" and reads == [1]:
            yield consumer.name, value


def savedmodel_kernels(loaded):
    """The GEMM weights of every signature of a loaded SavedModel, each once.

    Ordered like the SavedModel's variables (for a Keras export: layer order).
    """
    kernels = {}
    for signature in loaded.signatures.values():
        for kernel in function_kernels(signature):
            kernels.setdefault(kernel.name, kernel)
    order = {name: index for index, name in enumerate(_variable_names(loaded))}
    return sorted(kernels.values(), key=lambda kernel: order.get(kernel.name, len(order)))


def _variable_names(loaded):
    variables = getattr(loaded, "variables", None) or [
        variable for signature in loaded.signatures.values() for variable in signature.variables
    ]
    return [variable.name.removesuffix(":0") for variable in variables]
