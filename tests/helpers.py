"""Models, data and checks shared by the tests (fixtures live in conftest.py)."""

import importlib.util
import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tf_asp import compat
from tf_asp import pruning
from tf_asp import registry
from tf_asp.graph import apply
from tf_asp.graph.groups import find_groups
from tf_asp.graph.trace import trace_model
from tf_asp.graph.verify import relative_error

layers = keras.layers
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
    """Conv-BN-ReLU, Conv, pooling, Dense, Dense on 8x8x16 inputs, built with
    `api` (`keras` or `tf_keras`): every kernel prunable; three permutation
    groups of 32 channels (conv_1's bias and a BatchNormalization in one), and
    conv_1 reads the model input, so it is not C-permuted."""
    inputs = api.Input((8, 8, 16))
    x = api.layers.Conv2D(32, 3, padding="same", name="conv_1")(inputs)
    x = api.layers.ReLU()(api.layers.BatchNormalization(name="norm")(x))
    x = api.layers.ReLU()(api.layers.Conv2D(32, 3, padding="same", name="conv_2")(x))
    x = api.layers.GlobalAveragePooling2D()(x)
    x = api.layers.Dense(32, activation="relu", name="dense_1")(x)
    return api.Model(inputs, api.layers.Dense(16, name="dense_2")(x), name="small_convnet")


class PositionEmbedding(layers.Layer):
    """Adds a learned position embedding to its input, as keras_hub's
    `TokenAndPositionEmbedding` does: a `(sequence_length, width)` variable
    sliced to the input's length and broadcast over the batch."""

    def __init__(self, sequence_length, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = sequence_length

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.sequence_length, input_shape[-1]), name="embeddings"
        )

    def call(self, x):
        shape = ops.shape(x)
        positions = ops.slice(self.embeddings, (0, 0), (shape[-2], shape[-1]))
        return x + ops.broadcast_to(positions, shape)


def dense_attention(h, heads, name, product="einsum"):
    """Multi-head self-attention from plain Dense layers `{name}_q/_k/_v/_o`,
    the heads split with `ops.reshape` and attended with `ops.einsum` or
    `ops.matmul` (and transposes)."""
    length, width = h.shape[1], h.shape[2]
    head_dim = width // heads
    q, k, v = (
        ops.reshape(layers.Dense(width, name=f"{name}_{p}")(h), (-1, length, heads, head_dim))
        for p in "qkv"
    )
    scale = 1.0 / math.sqrt(head_dim)
    if product == "einsum":
        weights = ops.softmax(ops.einsum("btnh,bsnh->bnts", q, k) * scale, axis=-1)
        out = ops.einsum("bnts,bsnh->btnh", weights, v)
    else:
        q, k, v = (ops.transpose(t, (0, 2, 1, 3)) for t in (q, k, v))
        weights = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * scale, axis=-1)
        out = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))
    return layers.Dense(width, name=f"{name}_o")(ops.reshape(out, (-1, length, width)))


def encoder_block(h, name, heads=4, ffn=128, attention="mha"):
    """A post-norm transformer encoder block on the residual stream `h`:
    attention (`MultiHeadAttention`, or `dense_attention` with "einsum" or
    "matmul"), Add, LayerNormalization, Dense(gelu), Dense, Add,
    LayerNormalization."""
    width = h.shape[-1]
    if attention == "mha":
        a = layers.MultiHeadAttention(heads, width // heads, name=f"{name}_attention")(h, h)
    else:
        a = dense_attention(h, heads, f"{name}_attention", product=attention)
    h = layers.LayerNormalization(name=f"{name}_norm_1")(layers.Add()([h, a]))
    f = layers.Dense(ffn, activation="gelu", name=f"{name}_ffn_in")(h)
    f = layers.Dense(width, name=f"{name}_ffn_out")(f)
    return layers.LayerNormalization(name=f"{name}_norm_2")(layers.Add()([h, f]))


def encoder(blocks=1, width=64, length=16, vocabulary=None, classes=16, **block_options):
    """`blocks` encoder blocks on a residual stream of `width` channels,
    entered from float features through Dense `embed`, or from token ids
    through Embedding `tokens` plus a `PositionEmbedding` `positions`; read
    by a Dense `head` after average pooling over the sequence."""
    if vocabulary is None:
        inputs = keras.Input((length, 32))
        h = layers.Dense(width, name="embed")(inputs)
    else:
        inputs = keras.Input((length,), dtype="int32")
        h = layers.Embedding(vocabulary, width, name="tokens")(inputs)
        h = PositionEmbedding(length, name="positions")(h)
    for index in range(blocks):
        h = encoder_block(h, f"block_{index}", **block_options)
    outputs = layers.Dense(classes, name="head")(layers.GlobalAveragePooling1D()(h))
    return keras.Model(inputs, outputs)


class BroadcastProjection(layers.Layer):
    """A custom GEMM layer that multiplies by broadcasting and summing, not
    with one of the MatMul, BatchMatMul or Conv2D ops the probe reads."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 16), name="w")

    def call(self, x):
        return ops.sum(x[:, :, None] * self.w, axis=1)

    def tf_asp_gemm_kernels(self):
        return [registry.GemmKernel(self.w, input_axes=(0,), output_axes=(1,))]


def regression_data(model, samples=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples,) + tuple(model.input_shape[1:]))
    y = rng.standard_normal((samples,) + tuple(model.output_shape[1:]))
    return x.astype("float32"), y.astype("float32")


def images(count=64, seed=0):
    """`count` random 8x8x16 float32 images (what `small_convnet` takes)."""
    return np.random.default_rng(seed).standard_normal((count, 8, 8, 16)).astype("float32")


def kernel_values(model):
    """{name: value} of the kernels tf_asp prunes in `model`."""
    return {name: k.variable.numpy() for name, k in pruning.prunable_kernels(model).items()}


def weights(model):
    """A copy of every weight of `model`, to compare with `same_weights`."""
    return [v.numpy() for v in model.weights]


def same_weights(model, saved):
    """True when `model` still holds exactly the `weights` saved."""
    return all(np.array_equal(a, v.numpy()) for a, v in zip(saved, model.weights))


def twin(model):
    """A model of the same architecture holding the same weights."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


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


# Processes ----------------------------------------------------------------


def use_cpu_devices(count):
    """Splits the CPU into `count` logical devices; only before TensorFlow
    initialises (so in a fresh process: see `run_in_child`)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )


def run_in_child(function, *args, cpu_devices=1, timeout=300):
    """Runs `function(*args)` in a fresh Python whose TensorFlow sees
    `cpu_devices` logical CPUs; returns its output, or fails with it.

    `function` is a module-level function of a test module, `args` plain
    values. The child is killed after `timeout` seconds.
    """
    code = f"import helpers; helpers.use_cpu_devices({cpu_devices}); " + _call(function, args)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    return result.stdout


def run_workers(function, *args, count=2, timeout=300):
    """Runs `function(*args)` in `count` worker processes of one cluster on
    127.0.0.1 (free ports, a `TF_CONFIG` each, as on separate machines);
    returns their outputs, or fails with them. Every worker is killed by
    `timeout` seconds, or as soon as one fails."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(count)]}
    logs = [tempfile.TemporaryFile("w+") for _ in range(count)]  # pipes could fill and block
    workers = []
    try:
        for index, log in enumerate(logs):
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            command = [sys.executable, "-c", _call(function, args)]
            env = dict(_child_env(), TF_CONFIG=json.dumps(config))
            workers.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _finished(workers):
            time.sleep(0.2)
        failed = [
            f"worker {index}: {'still running' if w.poll() is None else f'exit {w.poll()}'}\n"
            f"{_read(log)[-4000:]}"
            for index, (w, log) in enumerate(zip(workers, logs))
            if w.poll() != 0
        ]
        assert not failed, "\n".join(failed)
        return [_read(log) for log in logs]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _finished(processes):
    """All ended, or one failed."""
    codes = [p.poll() for p in processes]
    return None not in codes or any(code not in (None, 0) for code in codes)


def _call(function, args):
    return f"import {function.__module__} as m; m.{function.__name__}(*{args!r})"


def _child_env():
    path = os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"), os.getenv("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2")


def _read(log):
    log.seek(0)
    return log.read()
