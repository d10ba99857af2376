"""Permutation groups: the kernels and variables that share one permutation.

The walk (`graph/walk.py`) joins tensors and variable axes into channel
spaces; a space that is a concatenation (of a `ConcatV2`'s inputs, of
attention heads) is made of *leaf* spaces, each permuted within its own
segment. A *group* is what one search serves: the leaves that prunable
kernels read together (a DenseNet block's concatenations, a layer's heads),
with

- its *consumers*: the kernels whose input channels it holds (C-permuted;
  siblings share the search, their matrices stacked),
- its *producers*: the kernels whose output channels it holds and the
  embedding tables gathered from (K-permuted),
- its *vectors*: every other variable that holds its channels (biases,
  BatchNormalization and LayerNormalization vectors, positional
  embeddings), and its *depthwise* kernels, permuted with them,
- its *segments*: one per leaf, in channel order. A permutation of the
  group maps every segment onto itself.

A group is *skipped* (left as it is, with a reason) when any of its leaves
cannot be permuted: an unsupported op reads or writes it, it is a model
input or output, a variable in it is also read some other way, a
concatenation's or a head's segments are not multiples of 4. So the seed's
three skip cases are covered (an unsupported op between two GEMM ops, on one
branch, a branch starting at the model input), and nothing is ever
half-permuted.

Non-prunable consumers in a group (a Dense with too few outputs, say) are
C-permuted with it, so the model keeps computing the same function, but the
search ignores them: their weights are never pruned.

```python
groups, roles = find_groups(trace_model(model))
for group in groups:
    print(group.id, group.consumer_names, group.segments, group.skip_reason)
```
"""

import collections
import dataclasses

import numpy as np
import tensorflow as tf

from tf_asp import compat
from tf_asp import registry
from tf_asp.graph.walk import ChannelWalk

Segment = collections.namedtuple("Segment", "start size")


@dataclasses.dataclass(eq=False)
class Kernel:
    """A GEMM kernel (or embedding table) in a group: its variable, layer,
    label and GEMM view.

    `gemm` is the registry's `GemmKernel` (None for a kernel no layer
    describes); `prunable` says whether tf_asp prunes it, `reason` why not.
    """

    variable: object
    layer: object
    name: str
    prunable: bool = False
    reason: str = ""
    gemm: object = None


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a group's channels lie on a variable.

    Channels `[start, start + size)` of the group are the indices
    `[offset, offset + size)` of the variable's `axes`, flattened row-major
    in the order listed (`(1, 2)` for the heads and head_dim of an attention
    projection's `(C, heads, head_dim)` kernel).
    """

    variable: object
    axes: tuple
    offset: int
    start: int
    size: int


@dataclasses.dataclass(eq=False)
class Group:
    """The consumers, producers and variables sharing one permutation."""

    id: int
    segments: tuple
    consumers: list
    producers: list
    vectors: list
    depthwise: list
    placements: list
    ops: list
    skip_reason: str = None

    @property
    def channels(self):
        return sum(segment.size for segment in self.segments)

    @property
    def consumer_names(self):
        return [k.name for k in self.consumers]

    @property
    def producer_names(self):
        return [k.name for k in self.producers]

    @property
    def prunable_consumers(self):
        return [k for k in self.consumers if k.prunable]

    def search_blocks(self, input_scales=None):
        """Per segment, `(kernel, block)` for every prunable consumer reading it.

        A block is the columns of the kernel's search matrix (one row per
        output and tap, one column per input channel: a Dense `(C, K)` kernel
        as `(K, C)`, a Conv2D `(H, W, C, K)` one as `(K*H*W, C)`) that the
        segment's channels are. A segment's search stacks its blocks.
        `input_scales` (id(kernel) -> one factor per input channel) weighs
        each column, as activation-aware scores do.
        """
        blocks = [[] for _ in self.segments]
        starts = {segment.start: i for i, segment in enumerate(self.segments)}
        for kernel in self.prunable_consumers:
            matrix = kernel.gemm.search_matrix(kernel.variable.numpy())
            scale = (input_scales or {}).get(id(kernel.variable))
            if scale is not None:
                matrix = np.abs(matrix) * np.asarray(scale, np.float64)[None, :]
            for placement in self.placements:
                if (
                    placement.variable is kernel.variable
                    and placement.axes == kernel.gemm.input_axes
                ):
                    columns = matrix[:, placement.offset : placement.offset + placement.size]
                    blocks[starts[placement.start]].append((kernel, columns))
        return blocks

    def search_matrices(self):
        """Per segment, its prunable consumers' blocks stacked (None if none)."""
        return [
            np.concatenate([block for _, block in blocks]) if blocks else None
            for blocks in self.search_blocks()
        ]


def find_groups(graph, padding=False):
    """Finds the permutation groups of an `OpGraph`.

    Only leaves that feed at least one prunable kernel make groups.

    Returns:
        `(groups, roles)`: the groups (skipped ones have a `skip_reason`) and,
        for plotting, a dict from the name of every op on the data path to
        `(role, input group, output group)`: its role is `"allow"`,
        `"infer"`, `"clear"` or `"unsupported"`, and the groups (or None)
        hold the channels of its input and of its output.
    """
    walk = ChannelWalk(graph).run()
    builder = _GroupBuilder(walk, padding)
    groups = builder.groups()
    return groups, builder.plot_roles(groups)


class _GroupBuilder:
    def __init__(self, walk, padding):
        self.walk = walk
        self.spaces = walk.spaces
        self.padding = padding
        self.layers = _layers_by_variable(walk.graph.model)
        self.labels = _layer_labels(walk.graph.model)
        self.group_of_leaf = {}

    def groups(self):
        members = self._members()
        leaves = [self.spaces.leaves(self.walk.variables.key(v, axes)) for _, v, axes in members]
        components = _Components()
        for found in leaves:
            components.join([leaf for leaf, _ in found])
        by_component = {}
        for member, found in zip(members, leaves):
            by_component.setdefault(components.find(found[0][0]), []).append((member, found))
        pins = self.spaces.leaf_pins()
        groups = []
        for component in by_component.values():
            group = self._group(len(groups), component, pins)
            if group is not None:
                groups.append(group)
        return groups

    def _members(self):
        """`(role, variable, axes)` of every variable axis in a space, consumers first."""
        members = [("consumer", use.variable, use.input_axes) for use in self.walk.kernels]
        members += [("producer", use.variable, use.output_axes) for use in self.walk.kernels]
        for role, found in (
            ("table", self.walk.variables.tables),
            ("vector", self.walk.variables.vectors),
            ("depthwise", self.walk.variables.depthwise),
        ):
            members += [(role, variable, axes) for variable, axes in found.values()]
        unique = {}
        for role, variable, axes in members:
            unique.setdefault((role, id(variable), axes), (role, variable, axes))
        return list(unique.values())

    def _group(self, number, component, pins):
        """The group of one component: `[((role, variable, axes), leaves), ...]`."""
        consumers = self._records(v for (role, v, _), _ in component if role == "consumer")
        if not any(k.prunable for k in consumers):
            return None
        starts = {}
        for _, found in component:
            for leaf, _ in found:
                if leaf not in starts:
                    starts[leaf] = sum(self.spaces.size(other) for other in starts)
        segments = tuple(Segment(start, self.spaces.size(leaf)) for leaf, start in starts.items())
        placements = [
            Placement(variable, axes, offset, starts[leaf], self.spaces.size(leaf))
            for (_, variable, axes), found in component
            for leaf, offset in found
        ]
        reasons = [reason for leaf in starts for reason in pins.get(leaf, [])]
        kernels = {id(k.variable): k for k in consumers}
        for (role, variable, axes), _ in component:
            kernel = kernels.get(id(variable))
            if role == "consumer" and kernel.prunable and axes != kernel.gemm.input_axes:
                reasons.append(
                    f"{kernel.name} is read along kernel axes {axes} but pruned along "
                    f"{kernel.gemm.input_axes}"
                )
        odd = [segment.size for segment in segments if segment.size % 4]
        if odd and len(segments) == 1:
            reasons.append(f"{odd[0]} channels is not a multiple of 4")
        elif odd:
            reasons.append(f"a segment of {odd[0]} channels is not a multiple of 4")
        group = Group(
            id=number,
            segments=segments,
            consumers=consumers,
            producers=self._records(
                v for (role, v, _), _ in component if role in ("producer", "table")
            ),
            vectors=list({id(v): v for (role, v, _), _ in component if role == "vector"}.values()),
            depthwise=[(v, axes) for (role, v, axes), _ in component if role == "depthwise"],
            placements=placements,
            ops=[],
            skip_reason=_summarize(reasons),
        )
        for leaf in starts:
            self.group_of_leaf[leaf] = group
        return group

    def _records(self, variables):
        unique = {id(v): v for v in variables}
        return [self._record(v) for v in unique.values()]

    def _record(self, variable):
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

    def plot_roles(self, groups):
        """Op name -> (role, group of its input channels, of its output)."""
        roles = {}
        for op in self.walk.graph.ops:
            role = self.walk.roles.get(op.name)
            if role is None or role == "skip":
                continue
            inputs = [self._group_of(t) for t in op.inputs if t.dtype != tf.resource]
            group_in = next((g for g in inputs if g is not None), None)
            group_out = self._group_of(op.outputs[0]) if op.outputs else None
            for group in {id(g): g for g in (group_in, group_out) if g is not None}.values():
                group.ops.append(op.name)
            roles[op.name] = (role, group_in, group_out)
        return roles

    def _group_of(self, tensor):
        key = ("tensor", tensor.ref())
        if key not in self.spaces:
            return None
        leaves = self.spaces.leaves(key)
        return self.group_of_leaf.get(leaves[0][0]) if leaves else None


class _Components:
    """Union-find over leaves: those read together make one group."""

    def __init__(self):
        self.parent = {}

    def find(self, key):
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def join(self, keys):
        roots = [self.find(k) for k in keys]
        for root in roots[1:]:
            self.parent[self.find(root)] = self.find(roots[0])


def _summarize(reasons):
    reasons = list(dict.fromkeys(reasons))
    if not reasons:
        return None
    more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
    return "; ".join(reasons[:3]) + more


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
