"""What tf_asp prunes: every GEMM layer's kernels, described in one place.

A *GEMM layer* multiplies its input by a kernel. tf_asp views each kernel as a
matrix: its *input axes* (contracted with the layer's input; the 2:4 groups
run along their flattened order) against its *output axes*. Any other axis (a
convolution's spatial taps) indexes GEMMs that share those input channels.

| layer                               | kernel               | input axes | output axes |
| ----------------------------------- | -------------------- | ---------- | ----------- |
| Dense                               | (C, K)               | 0          | 1           |
| EinsumDense `abc,cde->abde` (query) | (C, heads, head_dim) | 0          | 1, 2        |
| EinsumDense `abcd,cde->abe` (output)| (heads, head_dim, K) | 0, 1       | 2           |
| Conv1D, Conv2D                      | (..., C, K)          | -2         | -1          |
| SeparableConv1D/2D pointwise kernel | (1, ..., C, K)       | -2         | -1          |

Other GEMM layers (Conv3D, transposed and grouped convolutions, recurrent
cells, unknown layers holding a `kernel`) are described too, with the reason
tf_asp leaves them dense, so counts and reports cover every GEMM weight.
Layers are matched by their Keras class (and subclasses), for Keras 3 and
tf_keras alike; neither Keras is imported here.

```python
for gemm in gemm_layers(model):
    print(gemm.name, gemm.reason or "prunable",
          [k.unprunable_reason() for k in gemm.kernels])
```

A custom layer is pruned when it defines `tf_asp_gemm_kernels(self)`, which
returns its `GemmKernel`s (an empty list keeps it dense):

```python
class Projection(keras.layers.Layer):
    def tf_asp_gemm_kernels(self):
        return [tf_asp.GemmKernel(self.w, input_axes=(0,), output_axes=(1,))]
```

The same method attached to an existing class (`SomeLayer.tf_asp_gemm_kernels
= function`) registers a third-party layer.
"""

import dataclasses
import math
import re

import numpy as np

# The method a layer defines to describe its own GEMM kernels.
PROTOCOL_METHOD = "tf_asp_gemm_kernels"
# Sparse Tensor Cores need a GEMM's input size a multiple of 16 and its
# output size a multiple of 8.
INPUT_MULTIPLE = 16
OUTPUT_MULTIPLE = 8


@dataclasses.dataclass(frozen=True, eq=False)
class GemmKernel:
    """A kernel variable seen as a GEMM: which axes are inputs and outputs.

    Attributes:
        variable: the kernel variable (anything with `shape` and a value).
        input_axes: the axes contracted with the layer's input channels; the
            2:4 groups run along their flattened (row-major) order.
        output_axes: the axes that index output channels. Axes in neither
            (convolution taps) index separate GEMMs on the same channels.
        padding_allowed: with the wrapper's `padding=True`, an input size
            that is not a multiple of 16 is pruned anyway (Dense-like layers).

    ```python
    kernel = GemmKernel(conv.kernel, input_axes=(-2,), output_axes=(-1,))
    kernel.input_size, kernel.output_size, kernel.unprunable_reason()
    ```
    """

    variable: object
    input_axes: tuple
    output_axes: tuple
    padding_allowed: bool = False

    def __post_init__(self):
        rank = len(self.shape)
        inputs = _normalize_axes(self.input_axes, rank, "input_axes")
        outputs = _normalize_axes(self.output_axes, rank, "output_axes")
        if set(inputs) & set(outputs):
            raise ValueError(
                f"Kernel axes {sorted(set(inputs) & set(outputs))} are both input and "
                f"output axes of the kernel of shape {self.shape}."
            )
        object.__setattr__(self, "input_axes", inputs)
        object.__setattr__(self, "output_axes", outputs)

    @property
    def shape(self):
        return tuple(int(d) for d in self.variable.shape)

    @property
    def input_size(self):
        """The number of input channels: the product of the input axes."""
        return math.prod(self.shape[a] for a in self.input_axes)

    @property
    def output_size(self):
        """The number of output channels: the product of the output axes."""
        return math.prod(self.shape[a] for a in self.output_axes)

    @property
    def other_axes(self):
        """Every axis but the input axes (outputs first, then taps)."""
        taps = [a for a in range(len(self.shape)) if a not in self.input_axes + self.output_axes]
        return self.output_axes + tuple(taps)

    def unprunable_reason(self, padding=False):
        """Why sparse Tensor Cores cannot run this kernel 2:4, or None.

        The input size must be a multiple of 16 and the output size of 8;
        with `padding=True` a Dense-like kernel's input size may be anything.
        """
        return shape_reason(
            self.shape,
            self.input_size,
            self.output_size,
            padding and self.padding_allowed,
            hint=self.padding_allowed,
        )

    def gemm_matrix(self, value):
        """`value` (the kernel's shape) as an (input_size, -1) NumPy array."""
        value = np.asarray(value)
        return value.transpose(self.input_axes + self.other_axes).reshape(self.input_size, -1)

    def search_matrix(self, value):
        """`value` as the permutation search's (rows, input channels) matrix."""
        return self.gemm_matrix(value).T


@dataclasses.dataclass(frozen=True, eq=False)
class GemmLayer:
    """A layer holding GEMM kernels, and whether tf_asp prunes it.

    Attributes:
        layer: the Keras layer.
        kernels: its `GemmKernel`s (empty when they cannot be described).
        reason: why tf_asp leaves the whole layer dense, or None when it
            prunes every kernel whose shape qualifies.
    """

    layer: object
    kernels: tuple
    reason: str = None

    @property
    def name(self):
        return self.layer.name

    def prunable_kernels(self, padding=False):
        """The kernels tf_asp prunes: a supported layer's qualifying ones."""
        if self.reason is not None:
            return []
        return [k for k in self.kernels if k.unprunable_reason(padding) is None]

    def unprunable_reason(self, padding=False):
        """Why the layer, or its first kernel that does not qualify, stays
        dense; None when every kernel is pruned."""
        if self.reason is not None:
            return self.reason
        reasons = [k.unprunable_reason(padding) for k in self.kernels]
        return next((r for r in reasons if r is not None), None)


def shape_reason(shape, input_size, output_size, padding=False, hint=False):
    """Why a GEMM of this size does not suit sparse Tensor Cores, or None.

    `padding=True` accepts any input size; `hint=True` says that padding
    would. Used for kernels known only by their shape, too (reports).

    >>> shape_reason((24, 8), input_size=24, output_size=8)
    'input dim 24 of kernel (24, 8) is not a multiple of 16'
    """
    if output_size % OUTPUT_MULTIPLE:
        return f"output dim {output_size} of kernel {shape} is not a multiple of {OUTPUT_MULTIPLE}"
    if input_size % INPUT_MULTIPLE and not padding:
        suffix = " (padding=True would prune it)" if hint else ""
        return (
            f"input dim {input_size} of kernel {shape} is not a multiple of "
            f"{INPUT_MULTIPLE}{suffix}"
        )
    return None


def describe(layer):
    """The `GemmLayer` of `layer`, or None when it holds no GEMM kernel.

    ```python
    describe(keras.layers.Dense(64)).reason   # 'layer is not built ...'
    ```
    """
    method = getattr(layer, PROTOCOL_METHOD, None)
    if method is not None:
        kernels = tuple(method())
        for kernel in kernels:
            if not isinstance(kernel, GemmKernel):
                raise TypeError(
                    f"{type(layer).__name__}.{PROTOCOL_METHOD}() must return GemmKernel "
                    f"objects; got {type(kernel).__name__}."
                )
        return GemmLayer(layer, kernels)
    classes = _keras_class_names(layer)
    for names, rule in _RULES:
        if classes & names:
            return rule(layer)
    if _kernel_rank(getattr(layer, "kernel", None)) >= 2:
        return GemmLayer(
            layer,
            (),
            f"{type(layer).__name__} is not a layer tf_asp knows; give it a "
            f"{PROTOCOL_METHOD}() method to prune it (README: custom layers)",
        )
    return None


def gemm_layers(model):
    """The `GemmLayer` of every layer inside `model` that holds a GEMM kernel."""
    from tf_asp import compat

    return [g for g in map(describe, compat.flatten_layers(model)) if g is not None]


def einsum_axes(equation):
    """The (input axes, output axes) of an EinsumDense kernel for `equation`.

    Raises a ValueError that says why when the equation is not a GEMM over
    the kernel: a kernel axis that is also a batch axis (in input and
    output), one summed away, an ellipsis in the kernel, or no contraction.

    >>> einsum_axes("abcd,cde->abe")
    ((0, 1), (2,))
    """
    match = re.fullmatch(r"([\w.]+),([\w.]+)->([\w.]+)", equation.replace(" ", ""))
    if match is None:
        raise ValueError(f"equation '{equation}' is not of the form 'input,kernel->output'")
    inputs, kernel, output = match.groups()
    if "." in kernel or len(set(kernel)) != len(kernel):
        raise ValueError(f"equation '{equation}': its kernel spec '{kernel}' is not a GEMM's")
    batch = [c for c in kernel if c in inputs and c in output]
    summed = [c for c in kernel if c not in inputs and c not in output]
    if batch or summed:
        letter = (batch or summed)[0]
        role = "also an input and output axis" if batch else "summed away"
        raise ValueError(f"equation '{equation}': kernel axis '{letter}' is {role}")
    contracted = tuple(i for i, c in enumerate(kernel) if c in inputs)
    produced = tuple(i for i, c in enumerate(kernel) if c in output)
    if not contracted or not produced:
        raise ValueError(f"equation '{equation}' does not contract the input with the kernel")
    return contracted, produced


# Rules ---------------------------------------------------------------------


def _dense(layer):
    return _described(layer, "kernel", (0,), (1,), padding_allowed=True)


def _einsum_dense(layer):
    try:
        inputs, outputs = einsum_axes(layer.equation)
    except ValueError as error:
        return GemmLayer(layer, (), str(error))
    return _described(layer, "kernel", inputs, outputs, padding_allowed=True)


def _convolution(layer):
    groups = getattr(layer, "groups", 1)
    if groups not in (None, 1):
        return GemmLayer(layer, (), f"grouped convolution (groups={groups}) is not supported")
    return _described(layer, "kernel", (-2,), (-1,))


def _separable_convolution(layer):
    return _described(layer, "pointwise_kernel", (-2,), (-1,))


def _unsupported(reason, name="kernel", input_axes=(-2,), output_axes=(-1,)):
    def rule(layer):
        described = _described(layer, name, input_axes, output_axes)
        return GemmLayer(layer, described.kernels, described.reason or reason)

    return rule


def _described(layer, name, input_axes, output_axes, padding_allowed=False):
    """The layer's `name` kernel as a GemmLayer, with a reason if unusable."""
    variable = getattr(layer, name, None)
    if variable is None:
        return GemmLayer(layer, (), "layer is not built (it has no kernel yet)")
    kernel = GemmKernel(variable, input_axes, output_axes, padding_allowed)
    dtype = str(getattr(variable.dtype, "name", variable.dtype))
    if "float" not in dtype:
        return GemmLayer(layer, (kernel,), f"kernel dtype {dtype} is not a float (quantized?)")
    return GemmLayer(layer, (kernel,))


# Most specific first: in tf_keras, transposed, depthwise and separable
# convolutions subclass Conv2D.
_RULES = (
    (
        frozenset({"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}),
        _unsupported("transposed convolutions are not supported", "kernel", (-1,), (-2,)),
    ),
    (frozenset({"DepthwiseConv1D", "DepthwiseConv2D"}), lambda layer: None),  # per channel
    (frozenset({"SeparableConv1D", "SeparableConv2D"}), _separable_convolution),
    (frozenset({"Conv3D"}), _unsupported("Conv3D is not supported yet")),
    (frozenset({"Conv1D", "Conv2D"}), _convolution),
    (frozenset({"EinsumDense"}), _einsum_dense),
    (frozenset({"Dense"}), _dense),
    (
        frozenset({"SimpleRNNCell", "GRUCell", "LSTMCell"}),
        _unsupported("recurrent cells are not supported", "kernel", (0,), (1,)),
    ),
)


def _keras_class_names(layer):
    """Names of the Keras 3 or tf_keras classes `layer` is an instance of."""
    return {
        cls.__name__
        for cls in type(layer).__mro__
        if cls.__module__.split(".")[0] in ("keras", "tf_keras")
    }


def _kernel_rank(variable):
    shape = getattr(variable, "shape", None)
    return len(shape) if shape is not None else 0


def _normalize_axes(axes, rank, name):
    try:
        normalized = tuple(int(a) % rank if -rank <= int(a) < rank else None for a in axes)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of axes; got {axes!r}.") from None
    if not normalized or None in normalized or len(set(normalized)) != len(normalized):
        raise ValueError(f"{name}={axes!r} are not distinct axes of a rank-{rank} kernel.")
    return tuple(sorted(normalized))
