"""Draws a model's op graph with what channel permutation did to each op.

Colours follow the original tool: green = a GEMM op that was permuted or
pruned, yellow = passes a permutation through (clear list), orange = passes
it through and permutes a variable of its own (infer list), red = cannot
carry a permutation (unsupported). Each label holds the op name, its type and
then the group IDs (`#K,C` for a GEMM op between two groups; `#3(4)` for
group 3 made of 4 segments: attention heads, or the inputs of a channel
concatenation), the dims that were permuted (`[K]`, `[C]`, `[K,C]`) and `S`
when its kernel is sparsified.
Skip-list ops (constants, placeholders, variable reads) and the ops that only
compute on variables are hidden.

```python
permute_model(model, plot_to_file="model.png")  # or .pdf, .svg, .dot
```
"""

import os
import shutil
import warnings

from tf_asp.graph import oplists
from tf_asp.log import logger

COLOURS = {
    "allow": "palegreen",
    "clear": "lightyellow",
    "infer": "orange",
    "unsupported": "tomato",
}
IDLE_GEMM_COLOUR = "lightgrey"  # a GEMM op neither permuted nor pruned
FORMATS = ("png", "pdf", "svg", "dot")


def check_plot_path(path, name="plot path"):
    """The format a plot path asks for (its extension), or a ValueError."""
    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if extension not in FORMATS:
        raise ValueError(
            f"Cannot plot to {os.fspath(path)!r}: the {name}'s extension must be one of "
            f"{', '.join('.' + f for f in FORMATS)}."
        )
    return extension


def plot_graph(graph, roles, groups, path):
    """Writes the plot of an `OpGraph` to `path`; returns the path written.

    Args:
        graph: the traced `OpGraph`.
        roles: op name -> `(role, input group, output group)` from
            `find_groups`.
        groups: the groups from `find_groups`.
        path: a `.png`, `.pdf`, `.svg` or `.dot` file. Without the `dot`
            program of graphviz only `.dot` can be written; other formats
            then write `path + ".dot"` and warn.
    """
    import pydot

    extension = check_plot_path(path)
    sparse = {id(k.variable) for g in groups for k in g.prunable_consumers}
    active = {id(g) for g in groups if g.skip_reason is None}
    dot = pydot.Dot("tf_asp", graph_type="digraph", rankdir="TB")
    dot.set_node_defaults(shape="box", style="filled", fontname="Helvetica")
    for op in graph.ops:
        if op.name in roles:
            label, colour = _describe(op, roles[op.name], sparse, active, graph)
            dot.add_node(pydot.Node(_node_id(op), label=label, fillcolor=colour))
    for op in graph.ops:
        if op.name not in roles:
            continue
        for tensor in op.inputs:
            if tensor.op.name in roles:
                dot.add_edge(pydot.Edge(_node_id(tensor.op), _node_id(op)))
    dot.add_node(pydot.Node("legend", label=_LEGEND, shape="note", fillcolor="white"))

    if extension == "dot":
        dot.write(str(path), format="raw")
        return str(path)
    if shutil.which("dot") is None:
        fallback = f"{path}.dot"
        dot.write(fallback, format="raw")
        message = (
            f"Cannot write '{path}': the graphviz program `dot` is not "
            f"installed (e.g. `apt-get install graphviz`). Wrote the graph "
            f"to '{fallback}' instead; render it with `dot -T{extension}`."
        )
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
        return fallback
    dot.write(str(path), format=extension)
    return str(path)


_LEGEND = (
    "green: GEMM op permuted or pruned\\l"
    "yellow: passes the permutation through\\l"
    "orange: permutes its variables and passes through\\l"
    "red: cannot carry a permutation\\l"
    "#ids [K,C]: permutation groups and permuted dims; S: sparsified\\l"
    "#id(n): a group of n segments (heads, concatenated inputs)\\l"
)


def _describe(op, role_and_groups, sparse, active, graph):
    role, group_in, group_out = role_and_groups
    group_in = group_in if group_in is not None and id(group_in) in active else None
    group_out = group_out if group_out is not None and id(group_out) in active else None
    lines = [op.name, op.type]
    colour = COLOURS[role]
    if role == "allow":
        dims = [d for d, g in (("K", group_out), ("C", group_in)) if g is not None]
        ids = [_tag(g) for g in (group_out, group_in) if g is not None]
        kernel = _kernel_of(op, graph)
        is_sparse = kernel is not None and id(kernel) in sparse
        tag = f"#{','.join(ids)} [{','.join(dims)}]" if dims else ""
        tag = (tag + " S").strip() if is_sparse else tag
        if tag:
            lines.append(tag)
        if not dims and not is_sparse:
            colour = IDLE_GEMM_COLOUR
    else:
        group = group_out or group_in
        if group is not None and role == "infer":
            lines.append(f"#{_tag(group)} [K]")  # its variables are K-permuted
        elif group is not None and role == "clear":
            lines.append(f"#{_tag(group)}")
    return '"' + "\\n".join(lines) + '"', colour


def _tag(group):
    segments = len(group.segments)
    return f"{group.id}({segments})" if segments > 1 else str(group.id)


def _kernel_of(op, graph):
    tensor = op.inputs[1]
    while tensor.op.type in oplists.KERNEL_PATH:
        tensor = tensor.op.inputs[0]
    return graph.variable(tensor.op)


def _node_id(op):
    return '"' + op.name + '"'
