"""Channel permutation through transformers and sequence convolutions.

The residual stream is one group: every layer reading it (query, key, value,
the feed-forward input, the classifier) is C-permuted with one permutation,
and everything writing it (projections, embedding tables) or holding its
channels (LayerNormalization, biases, position embeddings) moves with it.
Attention output projections are C-permuted within each head, value
projections K-permuted the same way; query and key outputs stay as they are.
Every model keeps its function under random permutations (normalization
statistics and biases randomized first, so a missed variable shows), and
under the wrapper's real search, which then prunes 2:4 along the right axes.
"""

import keras
import numpy as np
import pytest
from helpers import encoder
from helpers import encoder_block
from helpers import permute_randomly
from helpers import permuted_sets
from helpers import randomize_normalization
from helpers import skip_reasons
from keras import ops

import tf_asp
from tf_asp import masks
from tf_asp import registry
from tf_asp.graph import permute_model

pytestmark = pytest.mark.usefixtures("fresh_keras")

layers = keras.layers
TOLERANCE = 1e-5


def group_of(groups, consumer):
    (group,) = [g for g in groups if consumer in g.consumer_names]
    return group


def sample_batch(model, size=4, seed=0):
    rng = np.random.default_rng(seed)
    shape = (size,) + tuple(model.input_shape[1:])
    if model.inputs[0].dtype.startswith("int"):
        return rng.integers(0, 16, shape).astype("int32")
    return rng.standard_normal(shape).astype("float32")


def train_one_step(model, **options):
    """Wraps Adam (permuting with the real search), fits one batch."""
    options.setdefault("search_device", "CPU")
    optimizer = tf_asp.AspOptimizerWrapperV2(keras.optimizers.Adam(1e-3), model, **options)
    model.compile(optimizer=optimizer, loss="mse")
    x = sample_batch(model)
    model.fit(x, np.zeros((len(x),) + model.output_shape[1:], "float32"), verbose=0)
    return optimizer


def assert_pruned_2to4_along_input_axes(model):
    """Every prunable kernel is 2:4 along its registry input axes."""
    kernels = [k for g in registry.gemm_layers(model) for k in g.prunable_kernels()]
    assert kernels
    for kernel in kernels:
        value = kernel.variable.numpy()
        assert masks.is_2to4(value, kernel.input_axes), kernel.variable.path
        assert np.count_nonzero(value) == value.size // 2, kernel.variable.path


# One block ---------------------------------------------------------------


def test_encoder_block_permutes_the_stream_the_heads_and_the_feed_forward():
    model = encoder(blocks=1, heads=4)
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    assert permuted_sets(groups) == (
        {"query", "key", "value", "attention_output", "block_0_ffn_in", "block_0_ffn_out", "head"},
        {"embed", "value", "attention_output", "block_0_ffn_in", "block_0_ffn_out"},
    )
    stream = group_of(groups, "head")
    assert stream.consumer_names == ["query", "key", "value", "block_0_ffn_in", "head"]
    assert sorted(stream.producer_names) == ["attention_output", "block_0_ffn_out", "embed"]
    assert {v.path for v in stream.vectors} == {
        "embed/bias",
        "block_0_attention/attention_output/bias",
        "block_0_ffn_out/bias",
        "block_0_norm_1/gamma",
        "block_0_norm_1/beta",
        "block_0_norm_2/gamma",
        "block_0_norm_2/beta",
    }
    heads = group_of(groups, "attention_output")
    assert heads.producer_names == ["value"]
    assert [v.path for v in heads.vectors] == ["block_0_attention/value/bias"]
    assert [tuple(s) for s in heads.segments] == [(0, 16), (16, 16), (32, 16), (48, 16)]
    # Query and key outputs feed no pruned kernel: nothing K-permutes them.
    assert not any({"query", "key"} & set(g.producer_names) for g in groups)


def test_head_permutations_stay_within_their_heads():
    """The attention output kernel (heads, head_dim, K) and the value kernel
    (C, heads, head_dim) move each head's channels among themselves only
    (the stream's permutation moves K and C too, so rows are compared as
    sorted values)."""
    model = encoder(blocks=1, heads=4)
    attention = model.get_layer("block_0_attention")
    value, output = attention._value_dense.kernel, attention._output_dense.kernel
    before = value.numpy(), output.numpy()

    permute_randomly(model, seed=3)

    after = value.numpy(), output.numpy()
    assert not np.array_equal(before[1], after[1])

    def rows(kernel, head):  # head_dim rows of one head, as sorted values
        return {tuple(np.sort(row)) for row in kernel[head]}

    for head in range(4):
        assert rows(after[1], head) == rows(before[1], head)
        assert rows(after[0].transpose(1, 2, 0), head) == rows(before[0].transpose(1, 2, 0), head)


@pytest.mark.parametrize(
    "options, call",
    [({}, {"use_causal_mask": True}), ({"dropout": 0.1}, {})],
    ids=["causal mask", "dropout: transposes and matmuls instead of einsums"],
)
def test_every_keras_attention_path_permutes_within_heads(options, call):
    x = keras.Input((16, 32))
    h = layers.Dense(64, name="embed")(x)
    a = layers.MultiHeadAttention(4, 16, name="attention", **options)(h, h, **call)
    h = layers.LayerNormalization(name="norm")(layers.Add()([h, a]))
    model = keras.Model(x, layers.Dense(16, name="head")(h))
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    assert permuted_sets(groups) == (
        {"query", "key", "value", "attention_output", "head"},
        {"embed", "value", "attention_output"},
    )
    assert len(group_of(groups, "attention_output").segments) == 4


def test_two_block_encoder_shares_one_stream_permutation():
    model = encoder(blocks=2, heads=4)
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    stream = group_of(groups, "head")
    assert stream.skip_reason is None
    assert stream.consumer_names == [
        "block_0_attention/query",
        "block_0_attention/key",
        "block_0_attention/value",
        "block_0_ffn_in",
        "block_1_attention/query",
        "block_1_attention/key",
        "block_1_attention/value",
        "block_1_ffn_in",
        "head",
    ]
    assert sorted(stream.producer_names) == [
        "block_0_attention/attention_output",
        "block_0_ffn_out",
        "block_1_attention/attention_output",
        "block_1_ffn_out",
        "embed",
    ]
    assert {v.path for v in stream.vectors} >= {
        f"block_{i}_norm_{j}/{w}" for i in (0, 1) for j in (1, 2) for w in ("gamma", "beta")
    }
    for block in (0, 1):
        heads = group_of(groups, f"block_{block}_attention/attention_output")
        assert heads.producer_names == [f"block_{block}_attention/value"]
        assert len(heads.segments) == 4
        ffn = group_of(groups, f"block_{block}_ffn_out")
        assert ffn.producer_names == [f"block_{block}_ffn_in"]
    assert len([g for g in groups if g.skip_reason is None]) == 5


@pytest.mark.parametrize("product", ["einsum", "matmul"])
def test_attention_from_plain_dense_layers(product):
    """Q, K, V and the output are Dense layers; the heads are split with
    ops.reshape (and transposed for matmul): the output projection is still
    C-permuted within each head, the value projection K-permuted with it."""
    model = encoder(blocks=1, heads=4, attention=product)
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    stream = group_of(groups, "head")
    assert sorted(stream.consumer_names) == [
        "block_0_attention_k",
        "block_0_attention_q",
        "block_0_attention_v",
        "block_0_ffn_in",
        "head",
    ]
    heads = group_of(groups, "block_0_attention_o")
    assert heads.skip_reason is None
    assert heads.producer_names == ["block_0_attention_v"]
    assert [v.path for v in heads.vectors] == ["block_0_attention_v/bias"]
    assert len(heads.segments) == 4 and {s.size for s in heads.segments} == {16}
    assert not any(
        {"block_0_attention_q", "block_0_attention_k"} & set(g.producer_names) for g in groups
    )


def test_token_and_position_embeddings_move_with_the_stream():
    """The Embedding table is K-permuted along its channel axis (it writes
    the stream), the position embedding variable with it."""
    model = encoder(blocks=1, vocabulary=100)
    randomize_normalization(model)
    table = model.get_layer("tokens").embeddings
    before = table.numpy()

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    stream = group_of(groups, "head")
    assert stream.skip_reason is None
    assert "tokens" in stream.producer_names
    assert "positions/embeddings" in {v.path for v in stream.vectors}
    after = table.numpy()
    assert not np.array_equal(before, after)
    assert {tuple(column) for column in after.T} == {tuple(column) for column in before.T}


def test_wrapped_step_on_an_embedded_encoder_prunes_every_gemm_2to4():
    """The real search through the wrapper: the function is unchanged after
    permutation (checked on token ids covering the vocabulary), then one
    step prunes every kernel 2:4 along its contracted axes."""
    model = encoder(blocks=2, vocabulary=200)
    randomize_normalization(model)
    x = sample_batch(model, size=8)
    before = np.asarray(model(x))

    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.SGD(0.0), model, search_device="CPU", search_time_limit=5
    )

    summary = optimizer.permutation_summary
    assert summary.error <= TOLERANCE
    np.testing.assert_allclose(np.asarray(model(x)), before, rtol=1e-4, atol=1e-5)
    assert not summary.skipped
    assert len(summary.groups) == 5
    heads = [g for g in summary.groups if "block_0_attention/attention_output" in g.consumers]
    assert "64 channels in segments 4x16" in str(heads[0])
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, np.zeros((8, 16), "float32"), verbose=0)
    assert_pruned_2to4_along_input_axes(model)
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (13, 13)


class ClassToken(layers.Layer):
    """A ViT's learned class token, put before the patches, and its learned
    position embeddings, added."""

    def build(self, shape):
        self.token = self.add_weight(shape=(1, 1, shape[-1]), name="token")
        self.positions = self.add_weight(shape=(shape[1] + 1, shape[-1]), name="positions")

    def call(self, x):
        token = ops.broadcast_to(self.token, (ops.shape(x)[0], 1, ops.shape(x)[-1]))
        return ops.concatenate([token, x], axis=1) + self.positions


def test_vision_transformer_class_token_moves_with_the_stream():
    """Patches from a strided Conv2D, a class token concatenated along the
    tokens (not the channels), the classifier reading it back as x[:, 0]."""
    x = keras.Input((32, 32, 3))
    h = layers.Reshape((16, 64))(layers.Conv2D(64, 8, strides=8, name="patches")(x))
    h = encoder_block(ClassToken(name="cls")(h), "block_0")
    model = keras.Model(x, layers.Dense(16, name="head")(h[:, 0]))
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    stream = group_of(groups, "head")
    assert stream.skip_reason is None
    assert sorted(stream.producer_names) == ["attention_output", "block_0_ffn_out", "patches"]
    assert {"cls/token", "cls/positions", "patches/bias"} <= {v.path for v in stream.vectors}


# Sequence and separable convolutions -----------------------------------------


def conv1d_model():
    x = keras.Input((16, 32))
    h = layers.Conv1D(64, 3, padding="same", activation="relu", name="conv_1")(x)
    h = layers.BatchNormalization(name="norm")(h)
    h = layers.Conv1D(32, 3, padding="same", name="conv_2")(h)
    return keras.Model(x, layers.Dense(16, name="head")(layers.GlobalAveragePooling1D()(h)))


def separable_model():
    x = keras.Input((8, 8, 16))
    h = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(32, 3, name="stem")(x)))
    h = layers.SeparableConv2D(64, 3, padding="same", activation="relu", name="separable_1")(h)
    h = layers.SeparableConv2D(32, 3, padding="same", name="separable_2")(h)
    return keras.Model(x, layers.Dense(16, name="head")(layers.GlobalAveragePooling2D()(h)))


def test_conv1d_model():
    model = conv1d_model()
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    assert permuted_sets(groups) == ({"conv_2", "head"}, {"conv_1", "conv_2"})
    assert "model input" in skip_reasons(groups)["conv_1"]
    (placement,) = [
        p for p in group_of(groups, "conv_2").placements if p.variable.path == "conv_2/kernel"
    ]
    assert placement.axes == (1,)  # (taps, C, K): the input channels


def test_separable_conv2d_moves_its_depthwise_kernel_with_the_channels():
    model = separable_model()
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    assert permuted_sets(groups) == (
        {"separable_1", "separable_2", "head"},
        {"stem", "separable_1", "separable_2"},
    )
    first = group_of(groups, "separable_1")
    assert first.producer_names == ["stem"]
    assert [(v.path, axes) for v, axes in first.depthwise] == [
        ("separable_1/depthwise_kernel", (2,))
    ]
    assert [k.variable.path for k in first.consumers] == ["separable_1/pointwise_kernel"]


@pytest.mark.parametrize("build, groups", [(conv1d_model, 2), (separable_model, 3)])
def test_wrapped_step_prunes_convolutions_along_their_input_channels(build, groups):
    model = build()
    randomize_normalization(model)

    optimizer = train_one_step(model, search_time_limit=5)

    assert optimizer.permutation_summary.error <= TOLERANCE
    assert len(optimizer.permutation_summary.groups) == groups
    assert_pruned_2to4_along_input_axes(model)


# Bad input -----------------------------------------------------------------


def test_heads_whose_size_is_not_a_multiple_of_4_are_left_as_they_are():
    """8 heads of 6 channels: the attention output's 48 inputs are
    prunable, but 2:4 groups would straddle heads, so that group is left
    alone with the reason; the stream and feed-forward groups are not."""
    attention = layers.MultiHeadAttention(8, 6, name="narrow")
    x = keras.Input((16, 32))
    h = layers.Dense(64, name="embed")(x)
    h = layers.LayerNormalization(name="norm")(layers.Add()([h, attention(h, h)]))
    model = keras.Model(x, layers.Dense(16, name="head")(h))
    randomize_normalization(model)
    output = attention._output_dense.kernel
    before = output.numpy()

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    reason = skip_reasons(groups)["attention_output"]
    assert "8 heads of 6 channels, not a multiple of 4" in reason
    # Its rows (input channels) are where they were; only its outputs (the
    # stream) moved.
    np.testing.assert_array_equal(np.sort(output.numpy(), -1), np.sort(before, -1))
    assert permuted_sets(groups) == (
        {"query", "key", "value", "head"},
        {"embed", "attention_output"},
    )


def test_einsum_dense_with_an_equation_tf_asp_does_not_read_stays_as_it_is():
    """A kernel axis that is also a batch axis ('b': one matrix per token)
    is no GEMM tf_asp prunes; the stream it reads is left unpermuted, and
    the summary says why for both."""
    x = keras.Input((16, 32))
    h = layers.Dense(64, name="embed")(x)
    mixed = layers.EinsumDense("abc,bcd->abd", output_shape=(16, 64), name="per_token")(h)
    h = layers.LayerNormalization(name="norm")(layers.Add()([h, mixed]))
    model = keras.Model(x, layers.Dense(16, name="head")(layers.Dense(64, name="ffn")(h)))
    weights = {v.path: v.numpy() for v in model.weights}

    summary = permute_model(model, search_device="CPU", search_time_limit=1)

    skipped = {name: s.reason for s in summary.skipped for name in s.consumers}
    assert "Einsum" in skipped["ffn"] and "multiplies by a variable" in skipped["ffn"]
    dense = dict(summary.dense_layers)
    assert (
        dense["per_token"]
        == "equation 'abc,bcd->abd': kernel axis 'b' is also an input and output axis"
    )
    assert "per_token stays dense" in str(summary)
    assert summary.c_permuted == ["head"] and summary.k_permuted == ["ffn"]
    for variable in model.weights:
        if variable.path.split("/")[0] in ("embed", "per_token", "norm"):
            np.testing.assert_array_equal(variable.numpy(), weights[variable.path])
