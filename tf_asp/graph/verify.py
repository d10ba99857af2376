"""The batch a permuted model is checked on, and how its outputs compare.

`permute_model` runs the model on a verification batch before and after it
writes the permuted weights; the outputs must agree to float rounding. A
weight the batch never reaches is never checked, so the generated batch
reaches as much as it can:

- float inputs are standard normal;
- an integer input that indexes a table (an `Embedding`, or any gather) covers
  the table's rows: values in `[0, rows)`, each row at least once where the
  batch has room (the batch grows to at most `MAX_INDEX_ELEMENTS` values);
- other integer inputs are uniform in `[0, INTEGER_RANGE)`, booleans 0 or 1.

Pass your own batch (`verify_inputs=`) when the model needs particular
values (token ids with special meaning, masks, positions).

```python
inputs = verification_inputs(graph)             # or check_inputs(graph, batch)
before = graph.run(inputs)
...                                              # write permuted weights
relative_error(before, graph.run(inputs))        # ~1e-7 when nothing broke
```
"""

import math

import numpy as np
import tensorflow as tf

INTEGER_RANGE = 16  # integer inputs that index nothing: values in [0, 16)
MAX_INDEX_ELEMENTS = 1 << 16  # the most values an index input grows to
_GATHERS = {"GatherV2": 1, "ResourceGather": 1, "GatherNd": 1}  # op -> indices input


def verification_inputs(graph, seed=0):
    """A generated verification batch for an `OpGraph` (a list of arrays)."""
    rng = np.random.default_rng(seed)
    samples = graph.sample_inputs
    ranges = [index_range(graph, placeholder) for placeholder in graph.inputs]
    batch = samples[0].shape[0] if samples and samples[0].ndim else None
    if batch is not None and all(spec.shape[0] is None for spec in graph.specs):
        batch = max([batch] + [_batch_for(x.shape, r) for x, r in zip(samples, ranges) if r])
    inputs = []
    for sample, rows in zip(samples, ranges):
        shape = (batch,) + sample.shape[1:] if sample.ndim else ()
        inputs.append(_values(shape, sample.dtype, rows, rng))
    return inputs


def check_inputs(graph, inputs):
    """User-given verification inputs as a list of arrays, one per model input.

    `inputs` is an array, or a list or dict of arrays nested like the model's
    inputs. Raises a ValueError that says what does not match.
    """
    arrays = [np.asarray(x) for x in tf.nest.flatten(inputs)]
    if len(arrays) != len(graph.sample_inputs):
        raise ValueError(
            f"verify_inputs holds {len(arrays)} arrays, but model '{graph.model.name}' "
            f"has {len(graph.sample_inputs)} inputs."
        )
    for index, (given, sample) in enumerate(zip(arrays, graph.sample_inputs)):
        if given.ndim != sample.ndim or given.shape[1:] != sample.shape[1:]:
            raise ValueError(
                f"verify_inputs[{index}] has shape {given.shape}; model input {index} "
                f"takes (batch,) + {sample.shape[1:]}."
            )
    batches = {a.shape[0] for a in arrays if a.ndim}
    if len(batches) > 1:
        raise ValueError(f"verify_inputs have different batch sizes: {sorted(batches)}.")
    return [a.astype(s.dtype) for a, s in zip(arrays, graph.sample_inputs)]


def index_range(graph, placeholder):
    """How many rows the tables an integer input indexes have (the fewest),
    or None when it indexes none (or is not an integer input)."""
    if not placeholder.dtype.is_integer:
        return None
    rows, pending, seen = [], [placeholder], set()
    while pending:
        tensor = pending.pop()
        for op, index in graph.consumers(tensor):
            if op.type in _GATHERS and index == _GATHERS[op.type]:
                rows.append(_table_rows(graph, op))
            elif op.name not in seen and op.type not in ("Shape", "Size", "Rank"):
                seen.add(op.name)
                pending.extend(t for t in op.outputs if t.dtype.is_integer)
    rows = [r for r in rows if r]
    return min(rows) if rows else None


def relative_error(expected, actual):
    """Largest `max|a - e| / max|e|` over a list of output arrays."""
    error = 0.0
    for e, a in zip(expected, actual):
        e = np.asarray(e, dtype=np.float64)
        a = np.asarray(a, dtype=np.float64)
        if not np.array_equal(np.isnan(e), np.isnan(a)):
            return float("inf")
        e, a = np.nan_to_num(e), np.nan_to_num(a)
        scale = max(float(np.max(np.abs(e), initial=0.0)), 1e-12)
        error = max(error, float(np.max(np.abs(a - e), initial=0.0)) / scale)
    return error


def _table_rows(graph, op):
    """The row count of the table a gather op reads (its gathered axis)."""
    if op.type == "ResourceGather":
        variable = graph.captured_variable(op.inputs[0])
        return int(variable.shape[0]) if variable is not None else None
    params = op.inputs[0].shape
    if op.type == "GatherNd" or params.rank is None:
        return params[0] if params.rank else None
    axis = tf.get_static_value(op.inputs[2]) if len(op.inputs) > 2 else 0
    return params[int(axis) % params.rank] if axis is not None else None


def _batch_for(shape, rows):
    """The batch size whose values can cover `rows` rows (within the cap)."""
    per_sample = max(1, math.prod(shape[1:]))
    return min(math.ceil(rows / per_sample), max(1, MAX_INDEX_ELEMENTS // per_sample))


def _values(shape, dtype, rows, rng):
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.dtype(bool):
        return rng.integers(0, 2, size=shape).astype(bool)
    if rows is None:
        return rng.integers(0, INTEGER_RANGE, size=shape).astype(dtype)
    count = math.prod(shape)
    every_row = np.resize(rng.permutation(rows), count)  # each row once, then again
    return rng.permutation(every_row).reshape(shape).astype(dtype)
