"""Permutation groups: the kernels and variables that share one permutation.

A channel permutation lives on a *channel space*: a set of tensors whose last
axis holds the same channels in the same order. Every op of the graph says
which of its tensors (and which axis of which variable) share a channel space
(see `oplists`): a Conv2D ties its input to axis -2 of its kernel and its
output to axis -1; a ReLU ties its output to its input; a BiasAdd also ties
its bias vector. Joining these ties gives the channel spaces; each one that
feeds a prunable kernel is a permutation *group*:

- its *consumers* are the kernels read on axis -2 (C-permuted; several are
  siblings and share one search on their concatenated matrices),
- its *producers* are the kernels written on axis -1 (K-permuted),
- its *vectors* are per-channel variables (bias, BatchNormalization,
  LayerNormalization) and its *depthwise* kernels `(variable, axis)` are
  permuted with them.

A group is *skipped* (left as it is, with a reason) when any of its tensors
cannot be permuted: it is read or written by an unsupported op, it is a model
input or output, or a kernel in it is also read some other way. This covers
the three skip cases of the original tool (an unsupported op between two GEMM
ops, an unsupported op on one branch, a branch that starts at the model
input), and also catches a producer whose output leaves the model.

Non-prunable consumers in a group (a Dense with too few outputs, say) are
C-permuted with it, so the model keeps computing the same function, but the
search ignores them: their weights are never pruned.

```python
groups = find_groups(trace_model(model))
for group in groups:
    print(group.id, group.consumer_names, group.skip_reason)
```
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tf_asp import compat
from tf_asp import registry
from tf_asp.graph import oplists

_KERNEL_PATH_OPS = ("Identity", "Cast")


@dataclasses.dataclass(eq=False)
class Kernel:
    """A GEMM kernel in a group: its variable, layer, label and GEMM view.

    `gemm` is the registry's `GemmKernel` (None for a kernel no layer
    describes); `prunable` says whether tf_asp prunes it, `reason` why not.
    """

    variable: object
    layer: object
    name: str
    prunable: bool = False
    reason: str = ""
    gemm: object = None


@dataclasses.dataclass(eq=False)
class Group:
    """The consumers, producers and variables sharing one permutation."""

    id: int
    channels: int
    consumers: list
    producers: list
    vectors: list
    depthwise: list
    ops: list
    skip_reason: str = None

    @property
    def consumer_names(self):
        return [k.name for k in self.consumers]

    @property
    def producer_names(self):
        return [k.name for k in self.producers]

    @property
    def prunable_consumers(self):
        return [k for k in self.consumers if k.prunable]

    def search_matrix(self):
        """The prunable consumers' kernels as one (rows, C) matrix.

        Each kernel is viewed with its input channels as columns (a Dense
        `(C, K)` kernel as `(K, C)`, a Conv2D `(H, W, C, K)` kernel as
        `(K*H*W, C)`); siblings are stacked along the rows.
        """
        return np.concatenate(
            [k.gemm.search_matrix(k.variable.numpy()) for k in self.prunable_consumers]
        )


def find_groups(graph, padding=False):
    """Finds the permutation groups of an `OpGraph`.

    Only channel spaces that feed at least one prunable kernel are groups.

    Returns:
        `(groups, roles)`: the groups (skipped ones have a `skip_reason`) and,
        for plotting, a dict from the name of every op on the data path to
        `(role, input group, output group)`: its role is `"allow"`,
        `"infer"`, `"clear"` or `"unsupported"`, and the groups (or None)
        hold the channels of its first input and of its output.
    """
    return _Analysis(graph, padding).run()


class _Analysis:
    def __init__(self, graph, padding):
        self.graph = graph
        self.padding = padding
        self.parent = {}
        self.pins = {}
        self.data = {t.ref() for t in graph.inputs}
        self.gemms = []  # (op, variable)
        self.depthwise = []  # (variable, channel axis)
        self.vectors = {}  # id(variable) -> variable
        self.kernel_reads = []  # (ReadVariableOp, variable)
        self.kernel_inputs = set()  # refs of tensors feeding a kernel input
        self.roles = {}  # op name -> role
        self.group_by_root = {}
        self.layers = _layers_by_variable(graph.model)
        self.labels = _layer_labels(graph.model)

    # Union-find over channel slots ----------------------------------------

    def _find(self, key):
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def _union(self, a, b):
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[ra] = rb
            self.pins.setdefault(rb, []).extend(self.pins.pop(ra, []))

    def _pin(self, key, reason):
        self.pins.setdefault(self._find(key), []).append(reason)

    def _tie(self, a, b):
        """Ties two tensors' channels; a channel-free tensor ties nothing."""
        ca, cb = _channels(a), _channels(b)
        if _free(ca) and _free(cb):
            return True
        if ca is None or cb is None or ca != cb:
            return False
        self._union(_slot(a), _slot(b))
        return True

    # Walk -----------------------------------------------------------------

    def run(self):
        for tensor in self.graph.inputs:
            self._pin(_slot(tensor), f"model input '{tensor.op.name}'")
        for tensor in self.graph.outputs:
            self._pin(_slot(tensor), "model output")
        for op in self.graph.ops:
            reads_data = any(t.ref() in self.data for t in op.inputs)
            if reads_data and op.type not in oplists.SHAPE_READERS:
                self.data.update(t.ref() for t in op.outputs)
            role = self._visit(op)
            if reads_data or op.type in oplists.ALLOW_OPS:
                self.roles[op.name] = role
        self._check_kernel_reads()
        return self._groups(), self._plot_roles()

    def _visit(self, op):
        kind = op.type
        if kind in oplists.SKIP_OPS:
            self._visit_skip(op)
            return "skip"
        if kind in oplists.ALLOW_OPS:
            return self._visit_gemm(op)
        if kind in oplists.DEPTHWISE:
            return self._visit_depthwise(op)
        if kind in oplists.GROUPED_CONV_CALLS:
            return self._visit_grouped_conv(op)
        if kind in oplists.PER_CHANNEL:
            return self._visit_per_channel(op)
        if kind in oplists.ELEMENTWISE_BINARY:
            return self._visit_elementwise(op)
        if kind in oplists.SHAPE_READERS:
            return "clear"
        if kind in oplists.REDUCTIONS:
            return self._visit_reduction(op)
        ties = self._pass_through(op)
        if ties is not None and all(self._tie(a, b) for a, b in ties):
            return "clear"
        return self._unsupported(op, f"{kind} '{op.name}' cannot carry it")

    def _pass_through(self, op):
        """The (input, output) pairs a clear op ties, or None if it cannot."""
        kind, x, y = op.type, op.inputs[0] if op.inputs else None, op.outputs[0]
        if kind in oplists.ELEMENTWISE_UNARY | oplists.SOFTMAX:
            return [(x, y)]
        if kind in oplists.IDENTITY_N:
            return list(zip(op.inputs, op.outputs))
        if kind in oplists.RESHAPES:
            return [(x, y)]
        if kind in oplists.TRANSPOSES:
            perm = tf.get_static_value(op.inputs[1])
            if perm is not None and list(perm)[-1] == len(perm) - 1:
                return [(x, y)]
            return None if not _free(_channels(x)) else []
        if kind in oplists.POOLING:
            if _nhwc(op) and op.get_attr("ksize")[-1] == 1 and op.get_attr("strides")[-1] == 1:
                return [(x, y)]
            return None
        if kind in oplists.PADDING:
            paddings = tf.get_static_value(op.inputs[1])
            if paddings is not None and not np.any(paddings[-1]):
                return [(x, y)]
            return None
        if kind in oplists.CONCATENATION:
            axis, rank = tf.get_static_value(op.inputs[-1]), y.shape.rank
            if axis is None or rank is None or int(axis) % rank == rank - 1:
                return None
            return [(t, y) for t in op.inputs[:-1]]
        return None

    def _visit_skip(self, op):
        if op.type == "Const":
            if not _free(_channels(op.outputs[0])):
                self._pin(_slot(op.outputs[0]), f"per-channel constant '{op.name}'")
        elif op.type == "ReadVariableOp":
            variable = self.graph.variable(op)
            y = op.outputs[0]
            if variable is None:
                self._pin(_slot(y), f"variable read by '{op.name}' is not the model's")
            elif _is_vector(variable):
                self.vectors[id(variable)] = variable
                self._union(_slot(y), _variable_slot(variable, -1))
            elif not _free(_channels(y)):
                self.kernel_reads.append((op, variable))

    def _visit_gemm(self, op):
        x, y = op.inputs[0], op.outputs[0]
        variable = self._kernel(op.inputs[1])
        if variable is None:
            return self._unsupported(op, f"{op.type} '{op.name}' has no kernel variable")
        if op.type == "MatMul" and (op.get_attr("transpose_a") or op.get_attr("transpose_b")):
            return self._unsupported(op, f"transposed MatMul '{op.name}'")
        if op.type == "Conv2D" and not _nhwc(op):
            return self._unsupported(op, f"Conv2D '{op.name}' is not NHWC")
        shape = tuple(variable.shape)
        if _channels(x) != shape[-2] or _channels(y) != shape[-1]:
            # A grouped convolution's kernel sees a slice of the channels.
            return self._unsupported(
                op, f"{op.type} '{op.name}' kernel {shape} does not match its input"
            )
        self._union(_slot(x), _variable_slot(variable, -2))
        self._union(_slot(y), _variable_slot(variable, -1))
        self.gemms.append((op, variable))
        return "allow"

    def _visit_depthwise(self, op):
        x, y = op.inputs[0], op.outputs[0]
        variable = self._kernel(op.inputs[1])
        if variable is None or not _nhwc(op):
            return self._unsupported(op, f"depthwise '{op.name}' is not supported")
        if variable.shape[-1] != 1:
            return self._unsupported(
                op, f"depthwise '{op.name}' has depth multiplier {variable.shape[-1]}"
            )
        if not self._tie(x, y):
            return self._unsupported(op, f"depthwise '{op.name}' changes the channels")
        self._union(_slot(x), _variable_slot(variable, -2))
        self.depthwise.append((variable, -2))
        return "infer"

    def _visit_grouped_conv(self, op):
        handles = [t for t in op.inputs if t.dtype == tf.resource]
        data = [t for t in op.inputs if t.dtype != tf.resource]
        variables = [self.graph.captured_variable(t) for t in handles]
        layer = self.layers.get(id(variables[0])) if len(variables) == 1 else None
        if (
            not isinstance(layer, keras.layers.Conv2D)
            or layer.kernel is not variables[0]
            or len(data) != 1
            or len(op.outputs) != 1
            or tuple(variables[0].shape)[-2] != 1
            or layer.groups != _channels(data[0])
            or not self._tie(data[0], op.outputs[0])
        ):
            return self._unsupported(op, f"function call '{op.name}' cannot carry it")
        self._union(_slot(data[0]), _variable_slot(variables[0], -1))
        self.depthwise.append((variables[0], -1))
        return "infer"

    def _visit_per_channel(self, op):
        x, y = op.inputs[0], op.outputs[0]
        if not _nhwc(op) or (op.type == "FusedBatchNormV3" and op.get_attr("is_training")):
            return self._unsupported(op, f"{op.type} '{op.name}' is not NHWC inference")
        operands = op.inputs[1:5] if op.type == "FusedBatchNormV3" else op.inputs[1:2]
        if not all(self._tie(x, t) for t in (y,) + tuple(operands)):
            return self._unsupported(op, f"{op.type} '{op.name}' operands do not match")
        return "infer"

    def _visit_elementwise(self, op):
        y = op.outputs[0]
        role = "clear"
        for t in op.inputs:
            if _free(_channels(t)):
                continue
            if not self._tie(t, y):
                return self._unsupported(
                    op, f"{op.type} '{op.name}' broadcasts across the channels"
                )
            if t.ref() not in self.data:
                role = "infer"  # the operand is computed from variables only
        return role

    def _visit_reduction(self, op):
        x, y = op.inputs
        axes, rank = tf.get_static_value(y), x.shape.rank
        if axes is None or rank is None:
            return self._unsupported(op, f"{op.type} '{op.name}' has unknown axes")
        if rank - 1 in {int(a) % rank for a in np.ravel(axes)}:
            return "clear"  # over the channels: invariant to their order
        if self._tie(x, op.outputs[0]):
            return "clear"
        return self._unsupported(op, f"{op.type} '{op.name}' moves the channels")

    def _unsupported(self, op, reason):
        for tensor in list(op.inputs) + list(op.outputs):
            if tensor.dtype != tf.resource and not _free(_channels(tensor)):
                self._pin(_slot(tensor), reason)
        return "unsupported"

    def _kernel(self, tensor):
        """The variable a kernel input reads (through Identity and Cast)."""
        path = [tensor]
        while tensor.op.type in _KERNEL_PATH_OPS:
            tensor = tensor.op.inputs[0]
            path.append(tensor)
        if tensor.op.type != "ReadVariableOp":
            return None
        variable = self.graph.variable(tensor.op)
        if variable is not None and len(variable.shape) >= 2:
            self.kernel_inputs.update(t.ref() for t in path)
            return variable
        return None

    def _check_kernel_reads(self):
        """Pins a kernel that is also read by anything but its GEMM op."""
        for read, variable in self.kernel_reads:
            pending = [read.outputs[0]]
            while pending:
                tensor = pending.pop()
                for op, index in self.graph.consumers(tensor):
                    if op.type in _KERNEL_PATH_OPS:
                        pending.append(op.outputs[0])
                    elif index != 1 or tensor.ref() not in self.kernel_inputs:
                        path = compat.variable_path(variable)
                        reason = f"kernel {path} is also read by '{op.name}'"
                        self._pin(_variable_slot(variable, -2), reason)
                        self._pin(_variable_slot(variable, -1), reason)

    # Results --------------------------------------------------------------

    def _kernel_record(self, variable):
        layer = self.layers.get(id(variable))
        name = self.labels.get(id(layer), compat.variable_path(variable))
        if layer is None:
            return Kernel(variable, None, name, False, "not a Keras layer's kernel")
        gemm_layer = registry.describe(layer)
        kernels = gemm_layer.kernels if gemm_layer is not None else ()
        gemm = next((k for k in kernels if k.variable is variable), None)
        if gemm is None:
            reason = (gemm_layer and gemm_layer.reason) or "not a GEMM kernel of its layer"
        else:
            reason = gemm_layer.reason or gemm.unprunable_reason(self.padding)
        return Kernel(variable, layer, name, reason is None, reason or "", gemm)

    def _groups(self):
        spaces = {}  # root -> dict of lists, in graph order

        def space(key):
            root = self._find(key)
            if root not in spaces:
                spaces[root] = dict(consumers={}, producers={}, depthwise={}, vectors={})
            return spaces[root]

        for _, variable in self.gemms:
            space(_variable_slot(variable, -2))["consumers"][id(variable)] = variable
            space(_variable_slot(variable, -1))["producers"][id(variable)] = variable
        for variable, axis in self.depthwise:
            space(_variable_slot(variable, axis))["depthwise"][id(variable)] = (variable, axis)
        for variable in self.vectors.values():
            space(_variable_slot(variable, -1))["vectors"][id(variable)] = variable

        groups = []
        for root, members in spaces.items():
            consumers = [self._kernel_record(v) for v in members["consumers"].values()]
            if not any(k.prunable for k in consumers):
                continue
            channels = int(consumers[0].variable.shape[-2])
            reason = None
            if self.pins.get(root):
                reasons = list(dict.fromkeys(self.pins[root]))
                more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
                reason = "; ".join(reasons[:3]) + more
            elif channels % 4:
                reason = f"{channels} channels is not a multiple of 4"
            groups.append(
                Group(
                    id=len(groups),
                    channels=channels,
                    consumers=consumers,
                    producers=[self._kernel_record(v) for v in members["producers"].values()],
                    vectors=list(members["vectors"].values()),
                    depthwise=list(members["depthwise"].values()),
                    ops=[],
                    skip_reason=reason,
                )
            )
            self.group_by_root[root] = groups[-1]
        return groups

    def _plot_roles(self):
        """Op name -> (role, group of its input channels, of its output)."""
        by_root = self.group_by_root
        roles = {}
        for op in self.graph.ops:
            role = self.roles.get(op.name)
            if role is None or role == "skip":
                continue
            data_inputs = [t for t in op.inputs[:1] if t.dtype != tf.resource]
            group_in = by_root.get(self._find(_slot(data_inputs[0]))) if data_inputs else None
            group_out = by_root.get(self._find(_slot(op.outputs[0]))) if op.outputs else None
            for group in {id(g): g for g in (group_in, group_out) if g is not None}.values():
                group.ops.append(op.name)
            roles[op.name] = (role, group_in, group_out)
        return roles


def _slot(tensor):
    return ("tensor", tensor.ref())


def _variable_slot(variable, axis):
    return ("variable", id(variable), axis)


def _channels(tensor):
    """The channel count (last dim) of a tensor: 0 for a scalar, None if unknown."""
    rank = tensor.shape.rank
    if rank is None:
        return None
    if rank == 0:
        return 0
    return tensor.shape[-1]


def _free(channels):
    """A scalar or size-1 last axis carries no channels (it broadcasts)."""
    return channels in (0, 1)


def _is_vector(variable):
    """A per-channel variable: shape (C,), or (1, ..., 1, C)."""
    shape = tuple(variable.shape)
    return len(shape) >= 1 and shape[-1] > 1 and all(d == 1 for d in shape[:-1])


def _nhwc(op):
    try:
        data_format = op.get_attr("data_format")
    except ValueError:
        return True
    return data_format in (b"NHWC", b"NDHWC", "NHWC")


def _layers_by_variable(model):
    """id(variable) -> the innermost layer that owns it."""
    owners = {}
    layers = [model, *compat.flatten_layers(model)]
    for layer in sorted(layers, key=lambda layer: -len(layer.weights)):
        for variable in layer.weights:
            owners[id(variable)] = layer
    return owners


def _layer_labels(model):
    """id(layer) -> its name, or its variable path when the name repeats."""
    layers = compat.flatten_layers(model)
    counts = {}
    for layer in layers:
        counts[layer.name] = counts.get(layer.name, 0) + 1
    labels = {}
    for layer in layers:
        label = layer.name
        if counts[layer.name] > 1 and layer.weights:
            label = compat.variable_path(layer.weights[0]).rsplit("/", 1)[0]
        labels[id(layer)] = label
    return labels
