"""Models, data and checks shared by the tests (fixtures live in conftest.py)."""

import keras
import numpy as np
import tensorflow as tf

from tf_asp import compat
from tf_asp import registry
from tf_asp.graph import apply
from tf_asp.graph.groups import find_groups
from tf_asp.graph.trace import trace_model
from tf_asp.graph.verify import relative_error

layers = keras.layers


def small_mlp(hidden=64, inputs=32, outputs=16):
    """Dense(inputs->hidden) -> ReLU -> Dense(hidden->outputs), built."""
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            layers.Dense(hidden, activation="relu", name="hidden"),
            layers.Dense(outputs, name="out"),
        ]
    )


def regression_data(model, samples=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples,) + tuple(model.input_shape[1:]))
    y = rng.standard_normal((samples,) + tuple(model.output_shape[1:]))
    return x.astype("float32"), y.astype("float32")


def prunable_kernels(model, padding=False):
    """The `GemmKernel`s tf_asp prunes in `model`, in layer order."""
    return [k for g in registry.gemm_layers(model) for k in g.prunable_kernels(padding)]


def prunable_layer_names(model, padding=False):
    return [g.name for g in registry.gemm_layers(model) if g.prunable_kernels(padding)]


def randomize_normalization(model, seed=0):
    """Random normalization statistics and biases, so a missed one shows."""
    rng = np.random.default_rng(seed)
    normalization = (layers.BatchNormalization, layers.LayerNormalization)
    for layer in compat.flatten_layers(model):
        if isinstance(layer, normalization):
            for variable in layer.weights:
                n = variable.shape
                if "variance" in variable.path or "gamma" in variable.path:
                    variable.assign(rng.uniform(0.5, 1.5, n))
                else:
                    variable.assign(rng.normal(0.0, 0.3, n))
        for name in ("bias", "gamma"):
            variable = getattr(layer, name, None)
            if isinstance(variable, keras.Variable) and not isinstance(layer, normalization):
                variable.assign(rng.normal(0.0, 0.3, variable.shape))


def permute_randomly(model, seed=0, **trace_options):
    """Applies a random permutation to every group; returns the groups and
    the relative error of `model(x)` before and after on random inputs."""
    graph = trace_model(model, **trace_options)
    groups, _ = find_groups(graph)
    inputs = graph.sample_inputs
    arguments = inputs[0] if len(inputs) == 1 else inputs
    before = [np.asarray(y) for y in tf.nest.flatten(model(arguments, training=False))]
    rng = np.random.default_rng(seed)
    permutations = {g.id: random_permutation(g, rng) for g in groups if g.skip_reason is None}
    apply.assign(apply.permuted_values(groups, permutations))
    after = [np.asarray(y) for y in tf.nest.flatten(model(arguments, training=False))]
    return groups, relative_error(before, after)


def random_permutation(group, rng):
    """A random permutation of a group's channels: each segment within itself."""
    return np.concatenate([start + rng.permutation(size) for start, size in group.segments])


def permuted_sets(groups):
    """(C-permuted names, K-permuted names) of the groups not skipped."""
    active = [g for g in groups if g.skip_reason is None]
    c = {name for g in active for name in g.consumer_names}
    k = {name for g in active for name in g.producer_names}
    return c, k


def skip_reasons(groups):
    return {name: g.skip_reason for g in groups if g.skip_reason for name in g.consumer_names}
