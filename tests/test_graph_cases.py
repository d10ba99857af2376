"""Which kernels a channel permutation reaches, on small models.

Each model is permuted with random permutations (any permutation applied
consistently must keep the function) and the exact C- and K-permuted sets are
checked: the seed's four graph cases and three skip cases, Dense layers around
a residual stream, nested models whose layers share names, a shared layer,
several inputs. Transformers: `test_graph_transformers.py`; channel
concatenations: `test_graph_concat.py`.
"""

import keras
import pytest
import tensorflow as tf
from helpers import permute_randomly
from helpers import permuted_sets
from helpers import randomize_normalization
from helpers import skip_reasons

from tf_asp.graph.trace import trace_model

pytestmark = pytest.mark.usefixtures("fresh_keras")

layers = keras.layers
TOLERANCE = 1e-5


def conv(filters, name, kernel=3):
    return layers.Conv2D(filters, kernel, padding="same", name=name)


def bn(name):
    return layers.BatchNormalization(name=name)


# The seed's four graph cases ------------------------------------------------


def test_typical_convnet_passes_permutations_through_batch_norms_to_both_branches():
    """Case 1: conv3's permutation K-permutes conv1_2 and conv2_1 (and their
    batch norms); conv1_2's own permutation reaches conv1_1."""
    x = keras.Input((8, 8, 16))
    a = bn("batch_norm_1")(conv(32, "conv1_1")(x))
    a = bn("batch_norm_2")(conv(32, "conv1_2")(layers.ReLU()(a)))
    b = bn("batch_norm_3")(conv(32, "conv2_1")(x))
    y = conv(32, "conv3")(layers.ReLU()(layers.Add()([a, b])))
    y = layers.Dense(16, name="head")(layers.GlobalAveragePooling2D()(y))
    model = keras.Model(x, y)
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    assert permuted_sets(groups) == (
        {"conv1_2", "conv3", "head"},
        {"conv1_1", "conv1_2", "conv2_1", "conv3"},
    )
    by_consumer = {tuple(sorted(g.consumer_names)): g for g in groups}
    conv3 = by_consumer[("conv3",)]
    assert sorted(conv3.producer_names) == ["conv1_2", "conv2_1"]
    vectors = {v.path.split("/")[0] for v in conv3.vectors}
    assert {"batch_norm_2", "batch_norm_3", "conv1_2", "conv2_1"} == vectors
    # conv1_1 and conv2_1 read the model input: nothing K-permutes it.
    assert "model input" in by_consumer[("conv1_1", "conv2_1")].skip_reason


def test_siblings_that_share_a_parent_share_one_permutation():
    """Case 2: conv1_3, conv3_1, conv4_1 all read channels produced by
    conv_b (two of them also conv_a's): one group searched on all three."""
    x = keras.Input((8, 8, 16))
    stem = layers.ReLU()(conv(32, "conv0")(x))
    a = conv(32, "conv_a")(stem)
    b = conv(32, "conv_b")(stem)
    s = layers.ReLU()(layers.Add()([a, b]))
    outputs = [
        conv(16, "conv1_3")(s),
        conv(16, "conv3_1")(s),
        conv(16, "conv4_1", kernel=1)(layers.ReLU()(bn("bn_b")(b))),
    ]
    model = keras.Model(x, outputs)
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    assert permuted_sets(groups) == (
        {"conv_a", "conv_b", "conv1_3", "conv3_1", "conv4_1"},
        {"conv0", "conv_a", "conv_b"},
    )
    siblings = [g for g in groups if "conv4_1" in g.consumer_names][0]
    assert sorted(siblings.consumer_names) == ["conv1_3", "conv3_1", "conv4_1"]
    assert sorted(siblings.producer_names) == ["conv_a", "conv_b"]
    (matrix,) = siblings.search_matrices()
    assert matrix.shape == (3 * 3 * 16 + 3 * 3 * 16 + 1 * 1 * 16, 32)


def test_long_chain_of_infer_and_clear_ops_reaches_the_producer():
    """Case 3: the permutation crosses bias, two batch norms and a chain of
    pointwise ops, pooling and padding; every variable on the way moves."""
    x = keras.Input((8, 8, 16))
    y = conv(32, "conv1")(x)
    y = bn("bn_a")(y)
    y = layers.Activation("relu6")(y)
    y = layers.Lambda(lambda t: t * 0.5 + 1.0)(y)
    y = layers.MaxPooling2D(2)(y)
    y = layers.ZeroPadding2D(1)(y)
    y = bn("bn_b")(y)
    y = layers.Activation("sigmoid")(y)
    y = conv(32, "conv2")(y)
    model = keras.Model(x, y)
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    assert permuted_sets(groups) == ({"conv2"}, {"conv1"})
    (group,) = [g for g in groups if g.skip_reason is None]
    assert sorted(v.path for v in group.vectors) == sorted(
        ["conv1/bias"]
        + [
            f"{n}/{w}"
            for n in ("bn_a", "bn_b")
            for w in ("gamma", "beta", "moving_mean", "moving_variance")
        ]
    )


def test_sibling_that_cannot_be_pruned_is_permuted_with_its_group():
    """A Dense with 4 outputs (not prunable) reads the same channels as a
    prunable one: it is C-permuted too (the function stays), but the search
    sees only the prunable kernel."""
    x = keras.Input((32,))
    h = layers.Dense(32, activation="relu", name="hidden")(x)
    model = keras.Model(x, [layers.Dense(16, name="pruned")(h), layers.Dense(4, name="small")(h)])
    groups, error = permute_randomly(model)
    assert error <= TOLERANCE
    assert permuted_sets(groups) == ({"pruned", "small"}, {"hidden"})
    (group,) = [g for g in groups if g.skip_reason is None]
    assert [k.name for k in group.prunable_consumers] == ["pruned"]
    assert [m.shape for m in group.search_matrices()] == [(16, 32)]


# The seed's three skip cases -------------------------------------------------


def reverse_channels():
    """An op that mixes channels: no permutation can cross it."""
    return layers.Lambda(lambda t: tf.reverse(t, axis=[-1]), name="reverse")


def test_unsupported_op_between_two_gemm_ops_stops_the_permutation():
    x = keras.Input((8, 8, 16))
    y = conv(32, "conv1")(x)
    y = conv(32, "conv2")(reverse_channels()(layers.ReLU()(y)))
    model = keras.Model(x, y)
    groups, error = permute_randomly(model)
    assert error <= TOLERANCE
    assert permuted_sets(groups) == (set(), set())
    assert "ReverseV2" in skip_reasons(groups)["conv2"]


def test_unsupported_op_on_one_branch_stops_the_whole_group():
    """conv3 has a good path to conv2 but another through an unsupported op."""
    x = keras.Input((8, 8, 16))
    y = layers.ReLU()(conv(32, "conv1")(x))
    a = reverse_channels()(y)
    b = bn("batch_norm")(conv(32, "conv2")(y))
    z = conv(32, "conv3")(layers.Add()([a, b]))
    model = keras.Model(x, z)
    randomize_normalization(model)
    groups, error = permute_randomly(model)
    assert error <= TOLERANCE
    assert "ReverseV2" in skip_reasons(groups)["conv3"]
    # conv2 reads conv1's channels through a ReLU and the reverse reads them
    # too: that group is stopped as well.
    assert "ReverseV2" in skip_reasons(groups)["conv2"]
    assert permuted_sets(groups) == (set(), set())


def test_branch_that_does_not_start_at_a_gemm_op_stops_the_group():
    """The model input reaches conv3 through batch_norm_1: nothing could
    K-permute it."""
    x = keras.Input((8, 8, 32))
    a = bn("batch_norm_1")(x)
    b = conv(32, "conv2")(layers.ReLU()(conv(32, "conv1")(x)))
    y = conv(16, "conv3")(layers.Add()([a, b]))
    model = keras.Model(x, y)
    randomize_normalization(model)
    groups, error = permute_randomly(model)
    assert error <= TOLERANCE
    assert "model input" in skip_reasons(groups)["conv3"]
    assert permuted_sets(groups) == ({"conv2"}, {"conv1"})


def test_producer_whose_output_leaves_the_model_is_not_permuted():
    x = keras.Input((32,))
    h = layers.Dense(32, name="hidden")(x)
    model = keras.Model(x, [h, layers.Dense(16, name="out")(h)])
    groups, error = permute_randomly(model)
    assert error <= TOLERANCE
    assert permuted_sets(groups) == (set(), set())
    assert "model output" in skip_reasons(groups)["out"]


# Other architectures ---------------------------------------------------------


def test_transformer_block_between_two_dense_layers_permutes_layer_norms():
    """With Dense projections around it, the residual stream's group holds
    both LayerNormalizations (gamma and beta move with the channels)."""
    x = keras.Input((10, 32))
    h = layers.Dense(64, name="embed")(x)
    f = layers.Dense(128, activation="gelu", name="ffn_1")(h)
    f = layers.Dense(64, name="ffn_2")(f)
    h = layers.LayerNormalization(name="norm")(layers.Add()([h, f]))
    y = layers.Dense(16, name="head")(h)
    model = keras.Model(x, y)
    randomize_normalization(model)
    groups, error = permute_randomly(model)
    assert error <= TOLERANCE
    assert permuted_sets(groups) == (
        {"ffn_1", "ffn_2", "head"},
        {"embed", "ffn_1", "ffn_2"},
    )
    stream = [g for g in groups if "head" in g.consumer_names][0]
    assert {"norm/gamma", "norm/beta"} <= {v.path for v in stream.vectors}


def test_nested_models_with_duplicate_layer_names_resolve_by_identity():
    def block(name):
        return keras.Sequential(
            [keras.Input((32,)), layers.Dense(32, name="dense"), layers.ReLU()],
            name=name,
        )

    first, second = block("first"), block("second")
    x = keras.Input((32,))
    y = layers.Dense(16, name="head")(second(first(layers.Dense(32, name="stem")(x))))
    model = keras.Model(x, y)
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    active = [g for g in groups if g.skip_reason is None]
    consumers = {id(k.variable) for g in active for k in g.consumers}
    producers = {id(k.variable) for g in active for k in g.producers}
    first_kernel, second_kernel = first.layers[0].kernel, second.layers[0].kernel
    assert consumers == {id(first_kernel), id(second_kernel), id(model.get_layer("head").kernel)}
    assert producers == {id(model.get_layer("stem").kernel), id(first_kernel), id(second_kernel)}
    names = {k.name for g in active for k in g.consumers}
    assert names == {"first/dense", "second/dense", "head"}


def test_shared_layer_called_twice_gets_one_permutation_per_channel_space():
    shared = layers.Dense(32, name="shared")
    x = keras.Input((32,))
    h = layers.ReLU()(shared(layers.Dense(32, name="stem")(x)))
    h = layers.ReLU()(shared(h))
    model = keras.Model(x, layers.Dense(16, name="head")(h))
    randomize_normalization(model)
    groups, error = permute_randomly(model)
    assert error <= TOLERANCE
    assert permuted_sets(groups) == ({"shared", "head"}, {"stem", "shared"})
    # The shared kernel's inputs (stem's and its own output) are one group.
    group = [g for g in groups if "shared" in g.consumer_names][0]
    assert sorted(group.producer_names) == ["shared", "stem"]
    assert sorted(group.consumer_names) == ["head", "shared"]


def test_multi_input_model():
    left, right = keras.Input((16,), name="left"), keras.Input((24,), name="right")
    a = layers.Dense(32, name="from_left")(left)
    b = layers.Dense(32, name="from_right")(right)
    y = layers.Dense(16, name="head")(layers.ReLU()(layers.Add()([a, b])))
    model = keras.Model([left, right], y)
    groups, error = permute_randomly(model)
    assert error <= TOLERANCE
    assert permuted_sets(groups) == ({"head"}, {"from_left", "from_right"})


class TwoTowers(keras.Model):
    """A subclassed model: it has no `model.inputs` to trace from."""

    def __init__(self):
        super().__init__()
        self.hidden = layers.Dense(32, activation="relu", name="hidden")
        self.out = layers.Dense(16, name="out")

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.out.build((None, 32))

    def call(self, x):
        return self.out(self.hidden(x))


def test_subclassed_model_needs_input_shapes():
    model = TwoTowers()
    model.build((None, 16))
    with pytest.raises(ValueError, match="input_shapes"):
        trace_model(model)
    for shapes in [(16,), [16], tf.TensorSpec((None, 16)), [tf.TensorSpec((None, 16))]]:
        groups, error = permute_randomly(model, input_shapes=shapes)
        assert error <= TOLERANCE
        assert permuted_sets(groups) == ({"out"}, {"hidden"})


def test_bad_input_shapes_say_what_is_expected():
    model = TwoTowers()
    model.build((None, 16))
    with pytest.raises(ValueError, match="tuple of ints"):
        trace_model(model, input_shapes="16")
