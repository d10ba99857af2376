"""Traces a Keras model into its TensorFlow inference op graph.

```python
graph = trace_model(model)                  # inputs from model.inputs
graph = trace_model(model, input_shapes=(32, 32, 3))
for op in graph.ops:
    print(op.type, graph.variable(op))      # a ReadVariableOp's Keras variable
```

The model is traced with a fully defined input signature (a small batch, and
unknown dims filled in) so every tensor in the graph has a static shape. Each
`ReadVariableOp` is resolved to its Keras variable through the concrete
function's captures, by identity: layers that share names, and layers called
twice, resolve correctly.

A graph traced with `fetchable=True` can also compute any of its tensors
(activation calibration reads the inputs of GEMM ops this way):

```python
graph = trace_model(model, tf.TensorSpec((32, 28, 28, 1)), fetchable=True)
fetch = graph.fetcher(lambda: [tf.reduce_sum(op.inputs[0]) for op in some_ops])
values = fetch(batch)
```
"""

import numpy as np
import tensorflow as tf

from tf_asp import compat

BATCH_SIZE = 2
UNKNOWN_DIM = 32  # stands for a `None` dim other than the batch dim


class OpGraph:
    """The inference op graph of a model traced on one sample batch.

    Attributes:
        model: the traced Keras model.
        function: the `tf.function` concrete function.
        ops: its operations, in topological order.
        inputs: the model-input placeholders.
        outputs: the model-output tensors.
        specs: the model's input `tf.TensorSpec`s (a None dim is free).
        sample_inputs: the random batch the graph was traced for (a list of
            arrays, one per model input; their shapes are fully defined).
    """

    def __init__(self, model, call, specs, sample_inputs, fetchable=False):
        self.model = model
        self.specs = specs
        self.sample_inputs = sample_inputs
        traced = [tf.TensorSpec(x.shape, tf.as_dtype(x.dtype)) for x in sample_inputs]
        if fetchable:
            # A v1-style wrapped function (public, in `tf.compat.v1`): unlike a
            # `tf.function`'s concrete function, it can be pruned to fetch any
            # tensor of its graph, including ops added after tracing.
            function = tf.compat.v1.wrap_function(call, traced)
            self._call = function
        else:
            self._call = tf.function(call, autograph=False)
            function = self._call.get_concrete_function(*traced)
        self.fetchable = fetchable
        self.function = function
        self.ops = list(function.graph.get_operations())
        self.inputs = list(function.graph.inputs[: len(sample_inputs)])
        self.outputs = list(function.graph.outputs)
        variables = {id(h): v for v in model.variables for h in compat.variable_handles(v)}
        self._variables = {}
        self._handles = {}
        captures = zip(function.graph.internal_captures, function.captured_inputs)
        for internal, external in captures:
            variable = variables.get(id(external))
            self._variables[internal.ref()] = variable
            if variable is not None:
                self._handles.setdefault(id(variable), []).append(internal)
        self._consumers = {}
        for op in self.ops:
            for index, tensor in enumerate(op.inputs):
                self._consumers.setdefault(tensor.ref(), []).append((op, index))

    def variable(self, op):
        """The Keras variable a `ReadVariableOp` reads, or None if unknown."""
        if op.type != "ReadVariableOp":
            return None
        return self.captured_variable(op.inputs[0])

    def captured_variable(self, handle):
        """The Keras variable behind a captured resource tensor, or None."""
        return self._variables.get(handle.ref())

    def handle_users(self, variable):
        """The `(op, input_index)` pairs that use `variable`'s captured handle
        (its `ReadVariableOp`s, and function calls that read it inside)."""
        return [
            use for handle in self._handles.get(id(variable), []) for use in self.consumers(handle)
        ]

    def consumers(self, tensor):
        """The `(op, input_index)` pairs that read `tensor`."""
        return self._consumers.get(tensor.ref(), [])

    def fetcher(self, fetches):
        """A function of the model inputs (arrays or tensors, one per input)
        that returns the tensors `fetches()` builds in this graph, as a list.

        Only for a graph traced with `fetchable=True`; `fetches` runs inside
        the graph, so it may add ops that read any of its tensors.
        """
        if not self.fetchable:
            raise ValueError("OpGraph.fetcher needs a graph traced with fetchable=True.")
        with self.function.graph.as_default():
            tensors = list(fetches())
        return self.function.prune(feeds=self.inputs, fetches=tensors)

    def run(self, inputs=None):
        """The model's outputs on `inputs` (a list of arrays, one per model
        input; default: the sample batch), as a list of arrays."""
        inputs = self.sample_inputs if inputs is None else inputs
        outputs = self._call(*[tf.constant(x) for x in inputs])
        return [np.asarray(o) for o in tf.nest.flatten(outputs)]


def trace_model(model, input_shapes=None, seed=0, fetchable=False):
    """Traces `model(x, training=False)` into an `OpGraph`.

    Args:
        model: a built Keras model.
        input_shapes: the input shape without the batch dim (a tuple), a
            `tf.TensorSpec` (with the batch dim), or a list of them for a
            model with several inputs. Defaults to `model.inputs`.
        seed: seed of the random sample batch.
        fetchable: trace a graph whose tensors `OpGraph.fetcher` can compute.
    """
    specs = input_specs(model, input_shapes)
    rng = np.random.default_rng(seed)
    sample_inputs = [_sample(spec, rng) for spec in specs]
    structure = input_structure(model)

    def call(*inputs):
        return model(model_arguments(structure, inputs), training=False)

    return OpGraph(model, call, specs, sample_inputs, fetchable)


def model_arguments(structure, inputs):
    """The flat `inputs` (one per model input) packed as the model takes them:
    in `structure` (`model.input`, or None for a subclassed model), else one
    tensor or a list."""
    if structure is not None and len(tf.nest.flatten(structure)) == len(inputs):
        return tf.nest.pack_sequence_as(structure, list(inputs))
    return inputs[0] if len(inputs) == 1 else list(inputs)


def input_structure(model):
    """The nested structure of a functional model's inputs, or None."""
    try:
        return model.input
    except (AttributeError, ValueError):  # a subclassed model
        return None


def input_specs(model, input_shapes=None):
    """The `tf.TensorSpec`s of `model`'s inputs (batch dim first)."""
    if input_shapes is not None:
        return [_to_spec(shape) for shape in _as_list(input_shapes)]
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"Cannot tell the input signature of model '{model.name}' (it has "
            "no `model.inputs`, as a subclassed model built without "
            "`keras.Input`). Pass `input_shapes`: the input shape without the "
            "batch dim, e.g. input_shapes=(224, 224, 3), a tf.TensorSpec, or "
            "a list of them for several inputs."
        )
    return [tf.TensorSpec(tuple(x.shape), tf.as_dtype(x.dtype)) for x in inputs]


def _as_list(input_shapes):
    if isinstance(input_shapes, tf.TensorSpec) or _is_shape(input_shapes):
        return [input_shapes]
    if isinstance(input_shapes, (list, tuple)) and input_shapes:
        return list(input_shapes)
    raise ValueError(
        f"input_shapes={input_shapes!r} is not a shape (a tuple of ints or "
        "None, without the batch dim), a tf.TensorSpec, or a list of them."
    )


def _is_shape(value):
    if isinstance(value, tf.TensorShape):
        return True
    return isinstance(value, (list, tuple)) and all(
        d is None or isinstance(d, (int, np.integer)) for d in value
    )


def _to_spec(shape):
    if isinstance(shape, tf.TensorSpec):
        return shape
    if not _is_shape(shape):
        raise ValueError(
            f"Input shape {shape!r} is not a tuple of ints or None (without "
            "the batch dim) nor a tf.TensorSpec."
        )
    return tf.TensorSpec((None,) + tuple(shape), tf.float32)


def _sample(spec, rng):
    shape = list(spec.shape)
    if shape:
        shape[0] = BATCH_SIZE if shape[0] is None else shape[0]
    shape = [UNKNOWN_DIM if d is None else d for d in shape]
    if spec.dtype.is_floating:
        return rng.standard_normal(shape).astype(spec.dtype.as_numpy_dtype)
    if spec.dtype.is_integer:
        return rng.integers(0, 2, size=shape).astype(spec.dtype.as_numpy_dtype)
    if spec.dtype == tf.bool:
        return rng.integers(0, 2, size=shape).astype(bool)
    raise ValueError(f"Cannot make a sample input of dtype {spec.dtype.name}.")
