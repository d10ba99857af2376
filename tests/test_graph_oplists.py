"""Every entry of the op lists, justified: a model whose permutation crosses
that op keeps its function, and an op that mixes channels is caught."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import random_permutation

from tf_asp.graph import ALLOW_OPS
from tf_asp.graph import CLEAR_OPS
from tf_asp.graph import INFER_OPS
from tf_asp.graph import SKIP_OPS
from tf_asp.graph import apply
from tf_asp.graph import oplists
from tf_asp.graph.groups import find_groups
from tf_asp.graph.trace import trace_model
from tf_asp.graph.verify import relative_error

pytestmark = pytest.mark.usefixtures("fresh_keras")

layers = keras.layers


class FusedBatchNorm(layers.Layer):
    """BatchNormalization through tf.nn's fused op, as tf_keras emits it."""

    def build(self, shape):
        def vector(low, high):
            initializer = keras.initializers.RandomUniform(low, high)
            return self.add_weight(shape=(shape[-1],), initializer=initializer)

        self.scale, self.offset = vector(0.5, 1.5), vector(-0.5, 0.5)
        self.mean, self.variance = vector(-0.5, 0.5), vector(0.5, 1.5)

    def call(self, x):
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x,
            self.scale,
            self.offset,
            mean=self.mean,
            variance=self.variance,
            is_training=False,
        )
        return y


def lam(function):
    return layers.Lambda(function)


def shape_sum(reader):
    """Adds 0 * (sum of a shape-reading op's output): values untouched."""
    return lam(lambda t: t + 0.0 * tf.cast(tf.reduce_sum(reader(t)), t.dtype))


def attend_within_rows(t):
    """Attention-like: each pixel a softmax-weighted sum of its row's pixels
    (a product of two tensors, batched over images and rows)."""
    m = tf.reduce_mean(t, axis=-1, keepdims=True)
    return tf.matmul(tf.nn.softmax(tf.matmul(m, m, transpose_b=True)), t)


def scale_heads(t):
    """Splits the 32 channels into 4 heads of 8 and weighs each head by a
    softmax over the heads' means: the permutation stays within each head."""
    heads = tf.reshape(t, (-1, 8, 8, 4, 8))
    weights = tf.nn.softmax(tf.reduce_mean(heads, axis=-1), axis=-1)
    return tf.reshape(tf.einsum("bhwnd,bhwn->bhwnd", heads, weights), (-1, 8, 8, 32))


# op type -> a layer between a Conv2D producer (32 channels) and a Dense
# consumer (32 -> 16) that makes the traced graph contain that op.
EXAMPLES = {
    "Conv2D": lambda: layers.Identity(),
    "MatMul": lambda: layers.Identity(),
    "Identity": lambda: lam(tf.identity),
    "Cast": lambda: lam(lambda t: tf.cast(tf.cast(t, tf.float64), tf.float32)),
    "StopGradient": lambda: lam(tf.stop_gradient),
    "Relu": lambda: layers.ReLU(),
    "Relu6": lambda: layers.ReLU(6.0),
    "Elu": lambda: layers.Activation("elu"),
    "Selu": lambda: layers.Activation("selu"),
    "Sigmoid": lambda: layers.Activation("sigmoid"),
    "Tanh": lambda: layers.Activation("tanh"),
    "Softplus": lambda: layers.Activation("softplus"),
    "Erfc": lambda: layers.Activation("gelu"),
    "Neg": lambda: lam(tf.negative),
    "Abs": lambda: lam(tf.abs),
    "Square": lambda: lam(tf.square),
    "Sqrt": lambda: lam(lambda t: tf.sqrt(tf.abs(t) + 1.0)),
    "Rsqrt": lambda: lam(lambda t: tf.math.rsqrt(tf.abs(t) + 1.0)),
    "IdentityN": lambda: layers.Activation("swish"),
    "AddV2": lambda: lam(lambda t: t + tf.nn.relu(t)),
    "Sub": lambda: lam(lambda t: t - 1.0),
    "Mul": lambda: lam(lambda t: t * 2.0),
    "RealDiv": lambda: lam(lambda t: t / 3.0),
    "Maximum": lambda: lam(lambda t: tf.maximum(t, 0.1)),
    "Minimum": lambda: lam(lambda t: tf.minimum(t, 0.1)),
    "SquaredDifference": lambda: lam(lambda t: tf.math.squared_difference(t, 0.5)),
    "AddN": lambda: lam(lambda t: tf.add_n([t, tf.nn.relu(t), t])),
    "BiasAdd": lambda: layers.Identity(),  # the producer's bias
    "FusedBatchNormV3": lambda: FusedBatchNorm(),
    "DepthwiseConv2dNative": lambda: layers.DepthwiseConv2D(3, padding="same"),
    "StatefulPartitionedCall": lambda: layers.Conv2D(32, 3, padding="same", groups=32),
    "Mean": lambda: layers.GlobalAveragePooling2D(),
    "Sum": lambda: lam(lambda t: tf.reduce_sum(t, axis=[1, 2])),
    "Max": lambda: layers.GlobalMaxPooling2D(),
    "Reshape": lambda: layers.Reshape((64, 32)),
    "Squeeze": lambda: lam(lambda t: tf.squeeze(tf.expand_dims(t, 1), axis=1)),
    "ExpandDims": lambda: lam(lambda t: tf.expand_dims(t, 1)),
    "Transpose": lambda: lam(lambda t: tf.transpose(t, [0, 2, 1, 3])),
    "MaxPool": lambda: layers.MaxPooling2D(2),
    "AvgPool": lambda: layers.AveragePooling2D(2),
    "Pad": lambda: layers.ZeroPadding2D(1),
    "PadV2": lambda: lam(
        lambda t: tf.pad(t, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=1.0)
    ),
    "MirrorPad": lambda: lam(lambda t: tf.pad(t, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")),
    "ConcatV2": lambda: lam(lambda t: tf.concat([t, 2.0 * t], axis=1)),
    "StridedSlice": lambda: lam(lambda t: t[:, 1:]),
    "Slice": lambda: lam(lambda t: tf.slice(t, [0, 1, 1, 0], [-1, 6, 6, -1])),
    "BroadcastTo": lambda: lam(
        lambda t: t + tf.broadcast_to(tf.reduce_max(t, axis=[1, 2], keepdims=True), tf.shape(t))
    ),
    "GatherV2": lambda: lam(lambda t: tf.gather(t, [0, 2, 5], axis=1)),
    "BatchMatMulV2": lambda: lam(attend_within_rows),
    "Einsum": lambda: lam(scale_heads),
    "Softmax": lambda: layers.Activation("softmax"),
    "LogSoftmax": lambda: lam(tf.nn.log_softmax),
    "Shape": lambda: shape_sum(lambda t: tf.raw_ops.Shape(input=t)),
    "Size": lambda: shape_sum(lambda t: tf.raw_ops.Size(input=t)),
    "Rank": lambda: shape_sum(lambda t: tf.raw_ops.Rank(input=t)),
}


def model_through(layer, input_shape=(8, 8, 16)):
    x = keras.Input(input_shape)
    y = layers.Conv2D(32, 3, padding="same", name="producer")(x)
    y = layer(y)
    return keras.Model(x, layers.Dense(16, name="consumer")(y))


def test_every_listed_op_has_an_example():
    assert set(EXAMPLES) == ALLOW_OPS | INFER_OPS | CLEAR_OPS


@pytest.mark.parametrize("op_type", sorted(EXAMPLES))
def test_permutation_crosses_listed_op(op_type):
    model = model_through(EXAMPLES[op_type]())
    graph = trace_model(model)
    groups, roles = find_groups(graph)
    (group,) = [g for g in groups if "consumer" in g.consumer_names]

    assert group.skip_reason is None
    assert group.producer_names == ["producer"]
    assert op_type in {graph.function.graph.get_operation_by_name(n).type for n in group.ops}
    x = graph.sample_inputs[0]
    before = np.asarray(model(x))
    permutation = random_permutation(group, np.random.default_rng(0))
    apply.assign(apply.permuted_values([group], {group.id: permutation}))
    assert relative_error([before], [np.asarray(model(x))]) <= 1e-5


def test_skip_ops_are_in_every_graph_and_hidden_from_roles():
    graph = trace_model(model_through(layers.ReLU()))
    _, roles = find_groups(graph)
    types = {op.type for op in graph.ops}
    assert SKIP_OPS <= types
    assert not any(op.type in SKIP_OPS for op in graph.ops if op.name in roles)


@pytest.mark.parametrize(
    "layer, reason",
    [
        (lam(lambda t: tf.reverse(t, axis=[-1])), "ReverseV2"),
        # The transpose moves the channels to axis 2, where the Dense's
        # reshape mixes them with the others.
        (lam(lambda t: tf.transpose(t, [0, 1, 3, 2])), "Reshape"),
        (layers.Reshape((32, 16, 64)), "Reshape"),
        (lam(lambda t: tf.concat([t[..., 16:], t[..., :16]], axis=-1)), "ConcatV2|StridedSlice"),
        (lam(lambda t: tf.nn.max_pool2d(t, [1, 1, 1, 2], [1, 1, 1, 2], "VALID")), "MaxPool"),
        (layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2), "depth multiplier"),
        (layers.Conv2D(32, 3, padding="same", groups=2), "function call"),
        (lam(lambda t: t * tf.constant(np.arange(32), tf.float32)), "per-channel constant"),
    ],
)
def test_ops_that_mix_or_move_channels_stop_the_permutation(layer, reason):
    """The consumer's group is skipped, naming the op (channels 32 wide)."""
    graph = trace_model(model_through(layer, input_shape=(32, 32, 16)))
    groups, _ = find_groups(graph)
    (group,) = [g for g in groups if "consumer" in g.consumer_names]
    assert group.skip_reason is not None
    assert re.search(reason, group.skip_reason)


def test_a_wrong_list_entry_is_caught_by_verification(monkeypatch):
    """Declaring a channel-mixing op as pass-through makes the permuted
    model compute something else; the check restores the weights and names
    the group."""
    from tf_asp.graph import PermutationError
    from tf_asp.graph import permute_model

    monkeypatch.setattr(oplists, "ELEMENTWISE_UNARY", oplists.ELEMENTWISE_UNARY | {"ReverseV2"})
    model = model_through(lam(lambda t: tf.reverse(t, axis=[-1])))
    consumer = model.get_layer("consumer").kernel
    # Large weights on 4 adjacent channels: any sensible search permutes.
    kernel = np.random.default_rng(0).uniform(0.0, 0.01, consumer.shape)
    kernel[:4] += 1.0
    consumer.assign(kernel.astype("float32"))
    weights = [v.numpy() for v in model.weights]
    with pytest.raises(PermutationError, match="group 1 .*consumer.*producer"):
        permute_model(model, search_device="numpy", search_time_limit=5)
    for saved, variable in zip(weights, model.weights):
        np.testing.assert_array_equal(saved, variable.numpy())


# GEMM layer -> its input axes and output axes as the graph reads its kernel
# (through Reshape, Transpose, ExpandDims, Cast), between a Dense producer
# and a Dense consumer on (batch, 16, 32) tensors.
GEMMS = {
    "Dense (MatMul)": (lambda: [layers.Dense(32, name="gemm")], (0,), (1,)),
    "EinsumDense to heads (Reshape, BatchMatMulV2)": (
        lambda: [layers.EinsumDense("abc,cde->abde", (16, 4, 8), name="gemm"), heads_to_channels()],
        (0,),
        (1, 2),
    ),
    "EinsumDense, kernel transposed (Transpose)": (
        lambda: [layers.EinsumDense("abc,dce->abde", (16, 4, 8), name="gemm"), heads_to_channels()],
        (1,),
        (0, 2),
    ),
    "EinsumDense from heads": (
        lambda: [
            layers.Reshape((16, 4, 8)),
            layers.EinsumDense("abcd,cde->abe", (16, 32), name="gemm"),
        ],
        (0, 1),
        (2,),
    ),
    "Conv1D (ExpandDims)": (
        lambda: [layers.Conv1D(32, 3, padding="same", name="gemm")],
        (1,),
        (2,),
    ),
    "Dense in float16 (Cast)": (
        lambda: [
            layers.Dense(32, name="gemm", dtype="mixed_float16"),
            layers.Activation("linear", dtype="float32"),
        ],
        (0,),
        (1,),
    ),
}


def heads_to_channels():
    return layers.Reshape((16, 32))


@pytest.mark.parametrize("name", sorted(GEMMS))
def test_gemm_kernels_are_read_along_their_registry_axes(name):
    build, input_axes, output_axes = GEMMS[name]
    x = keras.Input((16, 32))
    y = layers.Dense(32, name="producer")(x)
    for layer in build():
        y = layer(y)
    model = keras.Model(x, layers.Dense(16, name="consumer")(y))
    graph = trace_model(model)
    groups, _ = find_groups(graph)
    gemm = model.get_layer("gemm")
    reads = [g for g in groups if "gemm" in g.consumer_names]
    writes = [g for g in groups if "consumer" in g.consumer_names]

    assert [g.producer_names for g in reads] == [["producer"]]
    assert [g.producer_names for g in writes] == [["gemm"]]
    assert all(g.skip_reason is None for g in reads + writes)
    (c_axes,) = {p.axes for p in reads[0].placements if p.variable is gemm.kernel}
    (k_axes,) = {p.axes for p in writes[0].placements if p.variable is gemm.kernel}
    assert (c_axes, k_axes) == (input_axes, output_axes)
    assert reads[0].consumers[0].gemm.input_axes == input_axes  # what the registry prunes
    before = np.asarray(model(graph.sample_inputs[0]))
    rng = np.random.default_rng(0)
    permutations = {g.id: random_permutation(g, rng) for g in reads + writes}
    apply.assign(apply.permuted_values(reads + writes, permutations))
    after = np.asarray(model(graph.sample_inputs[0]))
    tolerance = 1e-3 if "float16" in name else 1e-5
    assert relative_error([before], [after]) <= tolerance
