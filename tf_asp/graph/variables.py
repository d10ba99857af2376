"""The variables behind the walk's ops, and the axes that hold channels.

The walk (`graph/walk.py`) ties variable axes to channel spaces in three ways,
each followed back from the op that reads them:

- a GEMM op's *kernel*, read through the reshapes and transposes
  `EinsumDense` and `Conv1D` apply (`kernel`): which variable axes became
  the op's input and output channels;
- an operand computed from variables only (`follow_operand`): a bias, a
  normalization's vectors, a position embedding sliced and broadcast, an
  embedding table gathered from; the variables' axes that meet the
  operand's channel axes join its space;
- `check` then pins every variable that is also read some way nobody
  followed (a kernel added to something else, say): permuting it would
  change what that read computes.

```python
reads = VariableReads(graph, spaces)
variable, groups, path = reads.kernel(matmul.inputs[1], is_data)
reads.follow_operand(bias_add, 1, bias_add.inputs[1], (0,), space, is_data)
reads.check(is_data)
```
"""

import collections
import math

import tensorflow as tf

from tf_asp import compat
from tf_asp.graph import axes as channel_axes
from tf_asp.graph import oplists


class VariableReads:
    """The variable axes in channel spaces, and the reads that were followed.

    Attributes:
        tables, vectors, depthwise: `{(id(variable), axes): (variable, axes)}`
            of embedding tables gathered from (their rows' channels), other
            per-channel variables, and depthwise kernels.
    """

    def __init__(self, graph, spaces):
        self.graph = graph
        self.spaces = spaces
        self.tables, self.vectors, self.depthwise = {}, {}, {}
        self._followed = set()  # (op name, input index) of every variable read followed
        self._axes = collections.defaultdict(set)  # id -> axes tuples in a space
        self._variables = {}  # id -> variable

    def key(self, variable, axes):
        """The space key of `variable`'s `axes` (flattened in that order)."""
        key = ("variable", id(variable), tuple(axes))
        if key not in self.spaces:
            self.spaces.add(key, math.prod(int(variable.shape[a]) for a in axes))
            self._axes[id(variable)].add(tuple(axes))
            self._variables[id(variable)] = variable
        return key

    def followed(self, uses):
        """Marks `(op name, input index)` pairs as reads the walk understood."""
        self._followed.update(uses)

    def kernel(self, tensor, is_data):
        """`(variable, groups, uses)` when `tensor` is a kernel variable read
        through `KERNEL_PATH` ops, else None: `groups[i]` are the variable
        axes merged into the tensor's axis `i`, `uses` the reads on the way."""
        path = []
        while tensor.op.type in oplists.KERNEL_PATH and not is_data(tensor):
            path.append(tensor.op)
            tensor = tensor.op.inputs[0]
        if tensor.op.type != "ReadVariableOp":
            return None
        variable = self.graph.variable(tensor.op)
        if variable is None or len(variable.shape) < 2:
            return None
        shape = tuple(int(d) for d in variable.shape)
        groups = [(a,) for a in range(len(shape))]
        for op in reversed(path):
            out = channel_axes.static_dims(op.outputs[0])
            if op.type == "Transpose":
                perm = tf.get_static_value(op.inputs[1])
                groups = None if perm is None else [groups[int(p)] for p in perm]
            elif op.type not in ("Identity", "Cast"):
                groups = None if out is None else channel_axes.regroup(shape, groups, out)
            if groups is None:
                return None
            shape = out
        return variable, groups, [(op.name, 0) for op in path]

    def follow_operand(self, consumer, index, tensor, axes, key, table=False):
        """Ties the variables that input `index` of `consumer`, `tensor`
        (computed from variables only), is made of to space `key`: their axes
        that meet `tensor`'s channel `axes`. `table`: it is gathered from."""
        self._followed.add((consumer.name, index))
        op, kind = tensor.op, tensor.op.type
        if kind == "ReadVariableOp":
            variable = self.graph.variable(op)
            if variable is None:
                self.spaces.pin(key, f"variable read by '{op.name}' is not the model's")
            else:
                self.spaces.union(key, self.key(variable, axes))
                (self.tables if table else self.vectors)[(id(variable), axes)] = (variable, axes)
            return
        if kind in ("Identity", "Cast"):
            self.follow_operand(op, 0, op.inputs[0], axes, key, table)
            return
        if kind == "Const":
            self.spaces.pin(key, f"per-channel constant '{op.name}'")
            return
        for input_index, input_axes in _operand_sources(op, tensor, axes):
            if not input_axes:
                reason = f"{kind} '{op.name}' makes per-channel values tf_asp cannot follow"
                self.spaces.pin(key, reason)
                return
            self.follow_operand(op, input_index, op.inputs[input_index], input_axes, key)

    def check(self, is_data):
        """Pins every variable in a space that is also read in a way nobody
        followed, or that would be permuted twice along one axis."""
        for key, variable in self._variables.items():
            stray = None
            for op, index in self.graph.handle_users(variable):
                if op.type == "ReadVariableOp":
                    stray = stray or self._stray_reader(op.outputs[0], is_data)
                elif (op.name, index) not in self._followed:
                    stray = stray or op
            reason = (
                stray
                and f"variable {compat.variable_path(variable)} is also read by '{stray.name}'"
            )
            taken = [a for axes in self._axes[key] for a in axes]
            if len(taken) != len(set(taken)):
                path = compat.variable_path(variable)
                reason = f"variable {path} would be permuted twice along one axis"
            for axes in self._axes[key] if reason else ():
                self.spaces.pin(self.key(variable, axes), reason)

    def _stray_reader(self, tensor, is_data):
        """The first op reading `tensor` (a variable's value) that nobody
        followed, or None."""
        pending = [tensor]
        while pending:
            for op, index in self.graph.consumers(pending.pop()):
                if op.type in oplists.SHAPE_READERS:
                    continue
                if (op.name, index) not in self._followed:
                    return op
                if not any(is_data(t) for t in op.outputs):
                    pending.extend(op.outputs)
        return None


def _operand_sources(op, tensor, axes):
    """`(input index, its axes)` of the inputs of `op` (computed from
    variables only) whose values meet `tensor`'s channel `axes`; an input's
    axes are None when the op mixes them with other axes."""
    kind, dims = op.type, channel_axes.static_dims(tensor)
    source_dims = channel_axes.static_dims(op.inputs[0]) if op.inputs else None
    if kind in oplists.ELEMENTWISE_UNARY:
        return [(0, axes)]
    if kind in oplists.ELEMENTWISE_BINARY | oplists.BROADCASTS:
        operands = op.inputs[:1] if kind in oplists.BROADCASTS else op.inputs
        found = [(i, channel_axes.operand_axes(t, tensor, axes)) for i, t in enumerate(operands)]
        return [(i, a) for i, a in found if a is not None]
    if kind in oplists.RESHAPES and dims is not None and source_dims is not None:
        return [(0, channel_axes.reshape_axes(dims, axes, source_dims))]
    if kind in oplists.TRANSPOSES:
        perm = tf.get_static_value(op.inputs[1])
        return [(0, None if perm is None else tuple(int(perm[a]) for a in axes))]
    if kind in oplists.SLICES and source_dims is not None:
        kept = channel_axes.kept_by_slice(op, source_dims) or {}
        source = {out: a for a, out in kept.items()}
        return [(0, tuple(source[a] for a in axes) if set(axes) <= set(source) else None)]
    return [(0, None)]
