"""The graph walk: which tensors and variable axes share a channel space.

Every op on the data path (computed from the model's inputs) is looked up in
`oplists` and ties its tensors' channel axes (`graph/axes.py`) and the axes
of the variables it reads to channel spaces (`graph/spaces.py`):

- a GEMM op ties its input to its kernel's input axes and its output to the
  kernel's output axes, whatever reshapes and transposes the kernel went
  through on the way (`EinsumDense`, `Conv1D`);
- an op that carries the permutation ties its output to its input, wherever
  it moves the channel axes; an operand computed from variables only (a
  bias, a normalization's vectors, a positional embedding) is followed back
  to those variables, whose matching axes join the space;
- a channel-axis concatenation makes its output the concatenation of its
  inputs' spaces; an attention product splits its channels into heads;
- anything else pins the spaces it touches, with the reason.

The variable side (kernels through their reshapes, operands followed back,
reads nobody followed) is `graph/variables.py`.

```python
walk = ChannelWalk(trace_model(model)).run()
walk.kernels       # [KernelUse(op, variable, input_axes, output_axes), ...]
walk.spaces        # the channel spaces; walk.roles: op name -> role
walk.variables     # VariableReads: .tables, .vectors, .depthwise, .key(v, axes)
```
"""

import collections
import math

import keras
import numpy as np
import tensorflow as tf

from tf_asp import compat
from tf_asp.graph import axes as channel_axes
from tf_asp.graph import oplists
from tf_asp.graph.axes import static_dims
from tf_asp.graph.spaces import ChannelSpaces
from tf_asp.graph.spaces import format_sizes
from tf_asp.graph.variables import VariableReads

# A GEMM op and its kernel: the variable axes contracted with the op's input
# channels, and those that make its output channels.
KernelUse = collections.namedtuple("KernelUse", "op variable input_axes output_axes")


class ChannelWalk:
    """Walks an `OpGraph` once; `run()` fills the attributes below.

    Attributes:
        spaces: the `ChannelSpaces`; tensors are keyed `tensor_key(t)`,
            variable axes `variables.key(variable, axes)`.
        variables: the `VariableReads` (tables, vectors, depthwise kernels).
        kernels: a `KernelUse` per GEMM op the walk followed.
        roles: op name -> `"allow"`, `"infer"`, `"clear"` or `"unsupported"`
            for every op on the data path.
    """

    def __init__(self, graph):
        self.graph = graph
        self.spaces = ChannelSpaces()
        self.variables = VariableReads(graph, self.spaces)
        self.kernels = []
        self.roles = {}
        self._layouts = {}  # tensor ref -> its channel axes, when not the last axis
        self._data = {t.ref() for t in graph.inputs}

    def run(self):
        for op in self.graph.ops:
            if not any(self.is_data(t) for t in op.inputs):
                continue  # variables and constants only: followed back from their use
            if op.type not in oplists.SHAPE_READERS:
                self._data.update(t.ref() for t in op.outputs)
            self.roles[op.name] = self._visit(op)
        for tensor in self.graph.inputs:
            self._pin(tensor, f"model input '{tensor.op.name}'")
        for tensor in self.graph.outputs:
            if self.is_data(tensor):
                self._pin(tensor, "model output")
        self.variables.check(self.is_data)
        return self

    # Tensors and their channels --------------------------------------------

    def is_data(self, tensor):
        return tensor.ref() in self._data

    def layout(self, tensor):
        """The channel axes of a tensor: its last axis unless an op moved them."""
        return self._layouts.get(tensor.ref(), channel_axes.last_axis(tensor.shape.rank or 0))

    def channels(self, tensor):
        """How many channels a tensor holds, or None if its shape is unknown."""
        dims = static_dims(tensor)
        if dims is None:
            return None
        return math.prod(dims[a] for a in self.layout(tensor))

    def free(self, tensor):
        """A tensor holds no channels: a scalar, or size 1 (it broadcasts)."""
        return self.channels(tensor) == 1

    def tensor_key(self, tensor):
        """The space key of a tensor's channels (None if its shape is unknown)."""
        key = ("tensor", tensor.ref())
        if key not in self.spaces:
            channels = self.channels(tensor)
            if channels is None:
                return None
            self.spaces.add(key, channels)
        return key

    def _pin(self, tensor, reason):
        if tensor.dtype != tf.resource and not self.free(tensor):
            key = self.tensor_key(tensor)
            if key is not None:
                self.spaces.pin(key, reason)

    def _carry(self, x, y, axes):
        """`y` holds `x`'s channels on `axes`; False if it cannot."""
        self._layouts[y.ref()] = tuple(axes)
        if self.channels(x) is None or self.channels(y) is None:
            return False
        if self.free(x) or self.free(y):
            return self.free(x) and self.free(y)
        return self.spaces.union(self.tensor_key(x), self.tensor_key(y))

    # Visitors ----------------------------------------------------------------

    def _visit(self, op):
        kind = op.type
        if kind in oplists.SKIP_OPS:
            return "skip"
        if kind in oplists.ALLOW_OPS:
            kernel = self.variables.kernel(op.inputs[1], self.is_data)
            if kernel is not None:
                return self._visit_gemm(op, *kernel)
        visitors = [
            (oplists.PRODUCTS, self._visit_product),
            (oplists.DEPTHWISE, self._visit_depthwise),
            (oplists.GROUPED_CONV_CALLS, self._visit_grouped_conv),
            (oplists.PER_CHANNEL, self._visit_per_channel),
            (oplists.ELEMENTWISE_BINARY, self._visit_elementwise),
            (oplists.CONCATENATION, self._visit_concatenation),
            (oplists.GATHERS, self._visit_gather),
            (oplists.REDUCTIONS, self._visit_reduction),
            (oplists.SHAPE_READERS, lambda op: "clear"),
        ]
        for kinds, visit in visitors:
            if kind in kinds:
                return visit(op)
        if kind in oplists.ALLOW_OPS:
            return self._unsupported(op, f"{kind} '{op.name}' has no kernel variable")
        if kind in oplists.IDENTITY_N:
            pairs = zip(op.inputs, op.outputs)
            return self._clear_if(op, all(self._carry(x, y, self.layout(x)) for x, y in pairs))
        x, y = op.inputs[0], op.outputs[0]
        axes = self._pass_through_axes(op, x, y)
        return self._clear_if(op, axes is not None and self._carry(x, y, axes))

    def _clear_if(self, op, carried):
        if carried:
            return "clear"
        return self._unsupported(op, f"{op.type} '{op.name}' cannot carry it")

    def _pass_through_axes(self, op, x, y):
        """Where a one-input pass-through op puts `x`'s channel axes, or None."""
        kind, axes, dims = op.type, self.layout(x), static_dims(x)
        if dims is None or static_dims(y) is None:
            return None
        if kind in oplists.ELEMENTWISE_UNARY:
            return axes
        if kind in oplists.SOFTMAX:  # over the last axis
            last = len(dims) - 1
            if last in axes and not self._within_heads(op, x, {last}):
                return None
            return axes
        if kind in oplists.RESHAPES:
            return channel_axes.reshape_axes(dims, axes, static_dims(y))
        if kind in oplists.TRANSPOSES:
            perm = tf.get_static_value(op.inputs[1])
            return None if perm is None else channel_axes.transpose_axes(perm, axes)
        if kind in oplists.SLICES:
            kept = channel_axes.kept_by_slice(op, dims) or {}
            return tuple(kept[a] for a in axes) if set(axes) <= set(kept) else None
        if kind in oplists.BROADCASTS:
            moved = channel_axes.broadcast_axes(len(dims), len(static_dims(y)), axes)
            return moved if [dims[a] for a in axes] == [static_dims(y)[a] for a in moved] else None
        if kind in oplists.POOLING:
            if not _nhwc(op):
                return None
            window = list(zip(op.get_attr("ksize"), op.get_attr("strides")))
            return axes if all(window[a] == (1, 1) for a in axes) else None
        if kind in oplists.PADDING:
            paddings = tf.get_static_value(op.inputs[1])
            return axes if paddings is not None and not np.any(paddings[list(axes)]) else None
        return None

    def _visit_gemm(self, op, variable, groups, path):
        kind, x, y = op.type, op.inputs[0], op.outputs[0]
        if kind == "Conv2D":
            if not _nhwc(op):
                return self._unsupported(op, f"Conv2D '{op.name}' is not NHWC")
            c, k = 2, 3
        else:
            adjoint = ("transpose_a", "transpose_b") if kind == "MatMul" else ("adj_x", "adj_y")
            if op.get_attr(adjoint[0]) or len(groups) != 2:
                return self._unsupported(op, f"{kind} '{op.name}' transposes its input")
            c, k = (1, 0) if op.get_attr(adjoint[1]) else (0, 1)
        input_axes, output_axes = groups[c], groups[k]
        shape = tuple(int(d) for d in variable.shape)
        rank = x.shape.rank or 0
        if (
            not input_axes
            or not output_axes
            or self.layout(x) != channel_axes.last_axis(rank)
            or self.channels(x) != math.prod(shape[a] for a in input_axes)
            or static_dims(y) is None
            or static_dims(y)[-1] != math.prod(shape[a] for a in output_axes)
        ):
            # A grouped convolution's kernel sees a slice of the channels.
            return self._unsupported(
                op, f"{kind} '{op.name}' kernel {shape} does not match its input"
            )
        self._layouts[y.ref()] = channel_axes.last_axis(y.shape.rank)
        self.spaces.union(self.tensor_key(x), self.variables.key(variable, input_axes))
        self.spaces.union(self.tensor_key(y), self.variables.key(variable, output_axes))
        self.variables.followed(path + [(op.name, 1)])
        self.kernels.append(KernelUse(op, variable, input_axes, output_axes))
        return "allow"

    def _visit_product(self, op):
        """A product carries one operand's channels into its output (the
        values, through the attention weights), split into heads. An operand
        whose space is already pinned (attention weights) carries nothing:
        it is never permuted."""
        kind, y = op.type, op.outputs[0]
        specs = None if any(static_dims(t) is None for t in op.inputs) else self._product_specs(op)
        if specs is None:
            return self._unsupported(op, f"{kind} '{op.name}' is not a product tf_asp follows")
        self._layouts[y.ref()] = channel_axes.last_axis(y.shape.rank or 0)
        candidates = []
        for index, x in enumerate(op.inputs):
            if self.free(x):
                continue
            if not self.is_data(x):
                return self._unsupported(op, f"{kind} '{op.name}' multiplies by a variable")
            result = channel_axes.product_channels(*specs, index, self.layout(x), static_dims(x))
            if isinstance(result, str):
                self._pin(x, f"{kind} '{op.name}' {result}")
            else:
                candidates.append((x, result))
        live = [c for c in candidates if not self.spaces.pinned(self.tensor_key(c[0]))]
        carried = False
        for number, (x, (axes, heads)) in enumerate(live or candidates):
            if number:
                self._pin(x, f"{kind} '{op.name}' carries the channels of both operands")
                continue
            self._layouts[y.ref()] = axes
            self._split_heads(op, x, heads)
            carried = self._carry(x, y, axes)
        if not carried:
            return self._unsupported(op, f"{kind} '{op.name}' cannot carry it")
        return "clear"

    def _product_specs(self, op):
        if op.type == "Einsum":
            return channel_axes.einsum_specs(op.get_attr("equation"))
        a, b = (static_dims(t) for t in op.inputs)
        if a is None or b is None or len(a) != len(b) or a[:-2] != b[:-2] or len(a) < 3:
            return None
        return channel_axes.matmul_specs(len(a), op.get_attr("adj_x"), op.get_attr("adj_y"))

    def _visit_depthwise(self, op):
        x, y = op.inputs[0], op.outputs[0]
        kernel = self.variables.kernel(op.inputs[1], self.is_data)
        if kernel is None or not _nhwc(op):
            return self._unsupported(op, f"depthwise '{op.name}' is not supported")
        variable, groups, path = kernel
        multiplier = static_dims(op.inputs[1])[-1]
        if multiplier != 1:
            return self._unsupported(op, f"depthwise '{op.name}' has depth multiplier {multiplier}")
        if self.layout(x) != channel_axes.last_axis(x.shape.rank) or not self._carry(
            x, y, self.layout(x)
        ):
            return self._unsupported(op, f"depthwise '{op.name}' changes the channels")
        key = self.variables.key(variable, groups[2])
        self.spaces.union(self.tensor_key(x), key)
        self.variables.depthwise[(id(variable), groups[2])] = (variable, groups[2])
        self.variables.followed(path + [(op.name, 1)])
        return "infer"

    def _visit_grouped_conv(self, op):
        handles = [(i, t) for i, t in enumerate(op.inputs) if t.dtype == tf.resource]
        data = [t for t in op.inputs if t.dtype != tf.resource]
        variables = [self.graph.captured_variable(t) for _, t in handles]
        layer = self._layer_of(variables[0]) if len(variables) == 1 else None
        if (
            not isinstance(layer, keras.layers.Conv2D)
            or layer.kernel is not variables[0]
            or len(data) != 1
            or len(op.outputs) != 1
            or tuple(variables[0].shape)[-2] != 1
            or layer.groups != self.channels(data[0])
            or self.layout(data[0]) != channel_axes.last_axis(data[0].shape.rank)
            or not self._carry(data[0], op.outputs[0], self.layout(data[0]))
        ):
            return self._unsupported(op, f"function call '{op.name}' cannot carry it")
        axes = (len(variables[0].shape) - 1,)
        self.spaces.union(self.tensor_key(data[0]), self.variables.key(variables[0], axes))
        self.variables.depthwise[(id(variables[0]), axes)] = (variables[0], axes)
        self.variables.followed([(op.name, handles[0][0])])
        return "infer"

    def _visit_per_channel(self, op):
        x, y = op.inputs[0], op.outputs[0]
        if not _nhwc(op) or (op.type == "FusedBatchNormV3" and op.get_attr("is_training")):
            return self._unsupported(op, f"{op.type} '{op.name}' is not NHWC inference")
        operands = op.inputs[1:5] if op.type == "FusedBatchNormV3" else op.inputs[1:2]
        if (
            self.layout(x) != channel_axes.last_axis(x.shape.rank)
            or any(static_dims(t) != (self.channels(x),) or self.is_data(t) for t in operands)
            or not self._carry(x, y, self.layout(x))
        ):
            return self._unsupported(op, f"{op.type} '{op.name}' operands do not match")
        for index, operand in enumerate(operands, 1):
            self.variables.follow_operand(op, index, operand, (0,), self.tensor_key(y))
        return "infer"

    def _visit_elementwise(self, op):
        y = op.outputs[0]
        if static_dims(y) is None or any(static_dims(t) is None for t in op.inputs):
            return self._unsupported(op, f"{op.type} '{op.name}' has unknown shapes")
        carriers = [t for t in op.inputs if self.is_data(t) and not self.free(t)]
        if carriers:
            first = carriers[0]
            axes = channel_axes.broadcast_axes(first.shape.rank, y.shape.rank, self.layout(first))
        else:
            axes = channel_axes.last_axis(y.shape.rank)
        self._layouts[y.ref()] = axes
        if self.free(y):
            return "clear"
        role = "clear"
        for index, t in enumerate(op.inputs):
            t_axes = channel_axes.operand_axes(t, y, axes)
            if t_axes is None:
                continue  # broadcast along the channels: the same for every one
            if t_axes == ():
                return self._unsupported(
                    op, f"{op.type} '{op.name}' broadcasts across the channels"
                )
            if not self.is_data(t):
                self.variables.follow_operand(op, index, t, t_axes, self.tensor_key(y))
                role = "infer"
            elif self.layout(t) != t_axes or not self._carry(t, y, axes):
                return self._unsupported(op, f"{op.type} '{op.name}' mixes channel layouts")
        return role

    def _visit_concatenation(self, op):
        y, inputs = op.outputs[0], list(op.inputs[:-1])
        axis, rank = tf.get_static_value(op.inputs[-1]), y.shape.rank
        if axis is None or rank is None or any(static_dims(t) is None for t in inputs):
            return self._unsupported(op, f"ConcatV2 '{op.name}' has unknown shapes")
        axis = int(axis) % rank
        data = [t for t in inputs if self.is_data(t)]
        axes = self.layout(data[0])
        if axis in axes:
            return self._visit_channel_concatenation(op, inputs, axes)
        self._layouts[y.ref()] = axes
        for index, t in enumerate(inputs):
            if not self.is_data(t):
                self.variables.follow_operand(op, index, t, axes, self.tensor_key(y))
            elif self.layout(t) != axes or not self._carry(t, y, axes):
                return self._unsupported(op, f"ConcatV2 '{op.name}' mixes channel layouts")
        return "clear" if all(self.is_data(t) for t in inputs) else "infer"

    def _visit_channel_concatenation(self, op, inputs, axes):
        y = op.outputs[0]
        last = channel_axes.last_axis(y.shape.rank)
        if axes != last or any(not self.is_data(t) or self.layout(t) != last for t in inputs):
            return self._unsupported(op, f"ConcatV2 '{op.name}' cannot carry it")
        self._layouts[y.ref()] = last
        sizes = [self.channels(t) for t in inputs]
        if any(size == 1 for size in sizes):
            return self._unsupported(op, f"ConcatV2 '{op.name}' concatenates single channels")
        self.spaces.concatenate(self.tensor_key(y), [self.tensor_key(t) for t in inputs])
        if any(size % 4 for size in sizes):
            self._pin(
                y,
                f"ConcatV2 '{op.name}' joins segments of {format_sizes(sizes)} channels, "
                "not all multiples of 4",
            )
        return "clear"

    def _visit_gather(self, op):
        params, indices, y = op.inputs[0], op.inputs[1], op.outputs[0]
        axis = tf.get_static_value(op.inputs[2])
        rank = params.shape.rank
        if axis is None or rank is None or op.get_attr("batch_dims") != 0:
            return self._unsupported(op, f"GatherV2 '{op.name}' cannot carry it")
        axis = int(axis) % rank
        if self.is_data(params):
            axes = self.layout(params)
            shift = (indices.shape.rank or 0) - 1
            moved = tuple(a if a < axis else a + shift for a in axes)
            return self._clear_if(op, axis not in axes and self._carry(params, y, moved))
        if axis == rank - 1:
            return self._unsupported(op, f"GatherV2 '{op.name}' gathers channels")
        self._layouts[y.ref()] = channel_axes.last_axis(y.shape.rank)
        if self.free(y):
            return "clear"
        self.variables.follow_operand(op, 0, params, (rank - 1,), self.tensor_key(y), table=True)
        return "infer"

    def _visit_reduction(self, op):
        x, y = op.inputs[0], op.outputs[0]
        reduction, rank = tf.get_static_value(op.inputs[1]), x.shape.rank
        if reduction is None or rank is None or static_dims(x) is None:
            return self._unsupported(op, f"{op.type} '{op.name}' has unknown axes")
        reduction = {int(a) % rank for a in np.ravel(reduction)}
        keep = op.get_attr("keep_dims")
        if not reduction & set(self.layout(x)):
            axes = channel_axes.reduced_axes(rank, reduction, self.layout(x), keep)
            return self._clear_if(op, self._carry(x, y, axes))
        if not self._within_heads(op, x, reduction):
            return self._unsupported(op, f"{op.type} '{op.name}' reduces some channel axes")
        # Over every channel (of each head): the result does not depend on
        # their order, and what its last axis holds comes from no producer.
        self._layouts[y.ref()] = channel_axes.last_axis(y.shape.rank)
        self._pin(y, f"{op.type} '{op.name}' reduces the channels away")
        return "clear"

    def _within_heads(self, op, x, mixed):
        """For an op mixing `x`'s values along `mixed` axes, some of them
        channel axes: True if it works within heads (all the channels, or
        the minor channel axes once per head), which split the channels."""
        heads = channel_axes.heads_of(self.layout(x), mixed, static_dims(x))
        if heads is None:
            return False
        self._split_heads(op, x, heads)
        return True

    def _split_heads(self, op, x, heads):
        """`x`'s channels are `heads` segments, each permuted within itself."""
        if heads > 1 and self.spaces.split(self.tensor_key(x), heads) is not None:
            size = self.channels(x) // heads
            if size % 4:
                self._pin(
                    x,
                    f"{op.type} '{op.name}' runs over {heads} heads of {size} channels, "
                    "not a multiple of 4",
                )

    def _unsupported(self, op, reason):
        for tensor in list(op.inputs) + list(op.outputs):
            if self.is_data(tensor) and static_dims(tensor) is not None:
                self._pin(tensor, reason)
        return "unsupported"

    def _layer_of(self, variable):
        for layer in compat.flatten_layers(self.graph.model):
            if any(w is variable for w in layer.weights):
                return layer
        return None


def _nhwc(op):
    try:
        data_format = op.get_attr("data_format")
    except ValueError:
        return True
    return data_format in (b"NHWC", b"NDHWC", "NHWC")
