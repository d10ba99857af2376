"""Activation norms from calibration data, for activation-aware masks.

With `criterion="activation"` a weight's score is `|w[c, k]| * ||x_c||_2`,
where `x_c` is its layer's input channel `c` over every calibration token
or pixel (the Wanda criterion): a channel that carries large activations
keeps its weights even when they are small.

The norms come from tf_asp's own op graph, not from Keras layers: the model
is traced (`tf_asp.graph.trace`, as for permutation), the graph walk finds
the GEMM op that multiplies by each pruned kernel and that op's input
tensor, and one pass over the calibration batches fetches each input's sum
of squares per channel. So functional, Sequential and subclassed models,
nested models and layers, `MultiHeadAttention` and tf_keras models work
alike, and a kernel used twice (a shared layer) counts both inputs.

A convolution's channel norm runs over every input pixel (each tap reads
the same channels, shifted). The probe cannot see a kernel whose GEMM op the
walk does not follow: a custom layer multiplying by its kernel with an op
other than MatMul, BatchMatMul or Conv2D (an `Einsum` op, say), a kernel
sliced or transposed on its way so that its input channels are not the
op's last axis, or an op reading a non-NHWC tensor. Such a model gets a
ValueError naming the kernels, before anything changes.

```python
probe = ActivationProbe(model, kernels, calibration_data)   # {name: GemmKernel}
norms = probe.channel_norms()     # {name: float64 array over the input channels}
```
"""

import numpy as np
import tensorflow as tf

from tf_asp.graph import trace
from tf_asp.graph.walk import ChannelWalk

BATCH_SIZE = 32  # samples per batch when the calibration data are arrays


class ActivationProbe:
    """Reads the input-channel norms of pruned kernels over calibration data.

    Args:
        model: a built Keras 3 or tf_keras model.
        kernels: `{name: GemmKernel}` of the kernels to probe.
        data: a `tf.data.Dataset` of batches of model inputs (or of
            `(inputs, targets[, weights])`, as `model.fit` reads them), or
            the inputs themselves: an array, or a list or dict of arrays for
            several inputs, batched here by `BATCH_SIZE`.
        input_shapes: the model's input shapes when it cannot tell them (see
            `AspOptimizerWrapperV2`); by default the data's shapes are
            checked against `model.inputs`.

    Raises:
        ValueError: no data, data of the wrong shape, or a kernel whose
            input the probe cannot see.
    """

    def __init__(self, model, kernels, data, input_shapes=None):
        self.model = model
        self.kernels = dict(kernels)
        self.batches = calibration_batches(model, data, input_shapes)
        self._fetchers = {}  # batch signature -> (function, kernel names)
        for batch in self.batches:
            signature = _signature(batch)
            if signature not in self._fetchers:
                self._fetchers[signature] = self._fetcher(batch)

    def channel_norms(self):
        """`{name: ||x_c||_2 per input channel}` over all calibration batches.

        Reads the model's current weights: call it again after they change
        (a permutation moves the channels).
        """
        sums = {name: 0.0 for name in self.kernels}
        for batch in self.batches:
            function, names = self._fetchers[_signature(batch)]
            for name, value in zip(names, function(*[tf.constant(x) for x in batch])):
                sums[name] = sums[name] + value.numpy().astype(np.float64)
        return {name: np.sqrt(total) for name, total in sums.items()}

    def _fetcher(self, batch):
        """The pruned function returning, per GEMM op reading a kernel, its
        input's sum of squares per channel; and the kernel of each output."""
        specs = [tf.TensorSpec(x.shape, tf.as_dtype(x.dtype)) for x in batch]
        try:
            graph = trace.trace_model(self.model, specs, fetchable=True)
        except Exception as error:  # the model does not run on these inputs
            raise ValueError(
                f"Model '{self.model.name}' could not be called on a calibration batch of "
                f"shapes {[tuple(x.shape) for x in batch]} ({type(error).__name__}: "
                f"{_first_line(error)}). Pass batches of the model's inputs."
            ) from error
        uses = ChannelWalk(graph).run().kernels
        found, unseen = [], []
        for name, kernel in self.kernels.items():
            inputs = [
                use.op.inputs[0]
                for use in uses
                if use.variable is kernel.variable and tuple(use.input_axes) == kernel.input_axes
            ]
            if not inputs:
                unseen.append(name)
            found += [(name, x) for x in inputs]
        if unseen:
            raise ValueError(
                f"criterion='activation' cannot see the input of {len(unseen)} pruned "
                f"kernel(s) of model '{self.model.name}': {', '.join(unseen)}. tf_asp reads a "
                "kernel's input at the MatMul, BatchMatMul or Conv2D op that multiplies by "
                "it, with the input channels on the last axis (tf_asp.calibration says "
                "which layers it cannot see). Use criterion='magnitude' for this model."
            )

        def fetches():
            return [
                tf.reduce_sum(tf.square(tf.cast(x, tf.float32)), axis=list(range(x.shape.rank - 1)))
                for _, x in found
            ]

        return graph.fetcher(fetches), [name for name, _ in found]


def calibration_batches(model, data, input_shapes=None):
    """The calibration data as a list of batches, each a list of arrays (one
    per model input), checked against the model's inputs."""
    if data is None:
        raise ValueError(
            "criterion='activation' needs calibration_data: a tf.data.Dataset of batches "
            "of model inputs, or an array (a list or dict of arrays for several inputs) "
            "of a few hundred samples."
        )
    if isinstance(data, tf.data.Dataset):
        batches = [flat(inputs_of(element)) for element in data.as_numpy_iterator()]
    else:
        arrays = flat(data)
        sizes = {len(x) if x.ndim else None for x in arrays}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                "calibration_data arrays must hold the same number of samples on their "
                f"first axis; got shapes {[x.shape for x in arrays]}."
            )
        count = sizes.pop()
        batches = [
            [x[start : start + BATCH_SIZE] for x in arrays] for start in range(0, count, BATCH_SIZE)
        ]
    return checked_batches(model, batches, input_shapes)


def checked_batches(model, batches, input_shapes=None):
    """`batches` (lists of arrays, one per model input) without the empty
    ones, each cast to the model's input dtypes; a ValueError naming a batch
    that does not fit the model's inputs, or when none holds a sample."""
    batches = [batch for batch in batches if batch and batch[0].ndim and len(batch[0])]
    if not batches:
        raise ValueError("calibration_data holds no samples.")
    specs = _model_specs(model, input_shapes)
    return [_checked(batch, specs, number) for number, batch in enumerate(batches)]


def inputs_of(element):
    """The model inputs of a dataset element, read as `model.fit` reads it."""
    if isinstance(element, tuple) and 1 <= len(element) <= 3:
        return element[0]
    return element


def flat(inputs):
    """The arrays of `inputs` (an array, or a list or dict of arrays), in
    `tf.nest` order."""
    return [np.asarray(x) for x in tf.nest.flatten(inputs)]


def _model_specs(model, input_shapes):
    """The model's input specs, or None when neither it nor `input_shapes` tells."""
    try:
        return trace.input_specs(model, input_shapes)
    except ValueError:
        if input_shapes is not None:
            raise
        return None  # a subclassed model: the data's shapes are taken as they are


def _checked(batch, specs, number):
    """One batch cast to the inputs' dtypes, or a ValueError naming the mismatch."""
    if specs is None:
        return [x.astype(np.float32) if x.dtype == np.float64 else x for x in batch]
    if len(batch) != len(specs):
        raise ValueError(
            f"calibration_data batch {number} holds {len(batch)} input arrays, but the model "
            f"takes {len(specs)} inputs."
        )
    checked = []
    for index, (x, spec) in enumerate(zip(batch, specs)):
        expected = tuple(spec.shape)
        fits = len(x.shape) == len(expected) and all(
            d is None or d == n for d, n in zip(expected[1:], x.shape[1:])
        )
        kinds = {np.dtype(spec.dtype.as_numpy_dtype).kind, x.dtype.kind}
        if not fits or (len(kinds) > 1 and kinds != {"i", "u"}):
            wanted = ("batch",) + tuple("any" if d is None else d for d in expected[1:])
            raise ValueError(
                f"calibration_data batch {number}, input {index}: got shape {x.shape} and "
                f"dtype {x.dtype}; the model takes shape {wanted} of dtype "
                f"{spec.dtype.name}. Pass batches of model inputs (a dataset must be "
                "batched)."
            )
        checked.append(x.astype(spec.dtype.as_numpy_dtype))
    return checked


def _signature(batch):
    return tuple((x.shape, x.dtype.str) for x in batch)


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
