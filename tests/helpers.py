"""Models, data and checks shared by the tests (fixtures live in conftest.py)."""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

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
