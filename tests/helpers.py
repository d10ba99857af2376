"""Models, data and checks shared by the tests (fixtures live in conftest.py)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from tf_asp import compat
from tf_asp import registry
from tf_asp.graph import apply
from tf_asp.graph.groups import find_groups
from tf_asp.graph.trace import trace_model
from tf_asp.graph.verify import relative_error

REPO = pathlib.Path(__file__).resolve().parents[1]


def small_mlp(hidden=64, inputs=32, outputs=16, api=keras):
    """Dense(inputs->hidden) -> ReLU -> Dense(hidden->outputs), built.

    `api` is the Keras to build it with: `keras` or `tf_keras`.
    """
    return api.Sequential(
        [
            api.Input((inputs,)),
            api.layers.Dense(hidden, activation="relu", name="hidden"),
            api.layers.Dense(outputs, name="out"),
        ]
    )


def small_convnet(api=keras):
    """conv1 -> bn -> ReLU -> conv2 -> pooling -> dense -> head, on 8x8x16.

    Every kernel is prunable, and all but conv1's inputs (the model's) can
    be permuted: conv1 and bn for conv2, conv2 for dense, dense for head.
    """
    x = api.Input((8, 8, 16))
    y = api.layers.Conv2D(32, 3, padding="same", name="conv1")(x)
    y = api.layers.BatchNormalization(name="bn")(y)
    y = api.layers.ReLU(name="relu")(y)
    y = api.layers.Conv2D(32, 3, padding="same", name="conv2")(y)
    y = api.layers.GlobalAveragePooling2D(name="pool")(y)
    y = api.layers.Dense(32, activation="relu", name="dense")(y)
    return api.Model(x, api.layers.Dense(16, name="head")(y), name="convnet")


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
    """Random normalization statistics and biases, so a missed one shows
    (Keras 3 and tf_keras models alike)."""
    rng = np.random.default_rng(seed)
    for layer in compat.flatten_layers(model):
        classes = {cls.__name__ for cls in type(layer).__mro__}
        normalization = bool(classes & {"BatchNormalization", "LayerNormalization"})
        if normalization:
            for variable in layer.weights:
                n, path = variable.shape, compat.variable_path(variable)
                if "variance" in path or "gamma" in path:
                    variable.assign(rng.uniform(0.5, 1.5, n))
                else:
                    variable.assign(rng.normal(0.0, 0.3, n))
        for name in ("bias", "gamma"):
            variable = getattr(layer, name, None)
            if hasattr(variable, "assign") and not normalization:
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
    permutations = {g.id: rng.permutation(g.channels) for g in groups if g.skip_reason is None}
    apply.assign(apply.permuted_values(groups, permutations))
    after = [np.asarray(y) for y in tf.nest.flatten(model(arguments, training=False))]
    return groups, relative_error(before, after)


def permuted_sets(groups):
    """(C-permuted names, K-permuted names) of the groups not skipped."""
    active = [g for g in groups if g.skip_reason is None]
    c = {name for g in active for name in g.consumer_names}
    k = {name for g in active for name in g.producer_names}
    return c, k


def skip_reasons(groups):
    return {name: g.skip_reason for g in groups if g.skip_reason for name in g.consumer_names}


def load_script(name):
    """Imports REPO/name.py as a module, without touching sys.path."""
    spec = importlib.util.spec_from_file_location(name, REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_command(*args, env=None):
    """Runs `python *args` from the repository root; returns the result."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def last_line(text):
    return text.strip().splitlines()[-1]
