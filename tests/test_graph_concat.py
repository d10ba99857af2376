"""Channel permutation through channel-axis concatenations.

A consumer of `concat([a, b])` is C-permuted with a permutation that keeps
`a`'s channels in `a`'s segment and `b`'s in `b`'s; each producer is
K-permuted with its segment's part. Several consumers reading overlapping
concatenations (a DenseNet block) share one group, searched segment by
segment. Segments that are not multiples of 4 leave the group as it is.
"""

import keras
import numpy as np
import pytest
from helpers import permute_randomly
from helpers import permuted_sets
from helpers import prunable_layer_names
from helpers import randomize_normalization
from helpers import skip_reasons

import tf_asp
from tf_asp import masks
from tf_asp import registry
from tf_asp.graph import permute_model

pytestmark = pytest.mark.usefixtures("fresh_keras")

layers = keras.layers
TOLERANCE = 1e-5


def conv(filters, name, kernel=1):
    return layers.Conv2D(filters, kernel, padding="same", name=name)


def bn_relu(x, name):
    return layers.ReLU()(layers.BatchNormalization(name=name)(x))


def dense_block(growth=16, depth=3):
    """A DenseNet block: each layer reads the concatenation of the stem and
    every earlier layer's output (through BatchNormalization and ReLU)."""
    x = keras.Input((8, 8, 16))
    h = conv(32, "stem", kernel=3)(x)
    for index in range(depth):
        y = conv(32, f"bottleneck_{index}")(bn_relu(h, f"norm_{index}"))
        y = conv(growth, f"grow_{index}", kernel=3)(bn_relu(y, f"inner_norm_{index}"))
        h = layers.Concatenate(name=f"concat_{index}")([h, y])
    h = conv(32, "transition")(bn_relu(h, "transition_norm"))
    return keras.Model(x, layers.Dense(16, name="head")(layers.GlobalAveragePooling2D()(h)))


def test_dense_block_is_one_group_of_one_segment_per_input():
    model = dense_block(growth=16, depth=3)
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    block = [g for g in groups if "transition" in g.consumer_names][0]
    assert block.skip_reason is None
    assert block.consumer_names == ["bottleneck_0", "bottleneck_1", "bottleneck_2", "transition"]
    assert sorted(block.producer_names) == ["grow_0", "grow_1", "grow_2", "stem"]
    assert [tuple(s) for s in block.segments] == [(0, 32), (32, 16), (48, 16), (64, 16)]
    # The transition's BatchNormalization holds all 80 channels, each layer's
    # the channels up to it: every segment lies on it at its own offset.
    norm = [p for p in block.placements if p.variable.path == "transition_norm/gamma"]
    assert sorted((p.start, p.offset, p.size) for p in norm) == [
        (0, 0, 32),
        (32, 32, 16),
        (48, 48, 16),
        (64, 64, 16),
    ]
    c_permuted, _ = permuted_sets(groups)
    assert c_permuted == set(prunable_layer_names(model)) - {"stem"}


def test_each_segment_search_stacks_the_consumers_that_read_it():
    model = dense_block(growth=16, depth=3)
    groups, _ = permute_randomly(model)
    block = [g for g in groups if "transition" in g.consumer_names][0]
    rows = [m.shape for m in block.search_matrices()]
    # The stem's 32 channels are read by all three bottlenecks and the
    # transition (32 outputs each); grow_2's 16 by the transition only.
    assert rows == [(4 * 32, 32), (3 * 32, 16), (2 * 32, 16), (1 * 32, 16)]


def inception_block(widths=(16, 24, 8, 16)):
    """An Inception block: four branches concatenated, read by the next
    block's 1x1 convolutions and an average-pooled branch."""
    x = keras.Input((8, 8, 16))
    h = bn_relu(conv(32, "stem", kernel=3)(x), "stem_norm")
    branches = [
        bn_relu(conv(widths[0], "branch_1x1")(h), "norm_1x1"),
        bn_relu(conv(widths[1], "branch_3x3", kernel=3)(conv(16, "reduce_3x3")(h)), "norm_3x3"),
        bn_relu(conv(widths[2], "branch_pool")(layers.AveragePooling2D(3, 1, "same")(h)), "n_p"),
        bn_relu(conv(widths[3], "branch_5x5", kernel=5)(conv(16, "reduce_5x5")(h)), "norm_5x5"),
    ]
    mixed = layers.Concatenate(name="mixed")(branches)
    readers = [conv(32, "next_1x1")(mixed), conv(32, "next_pool")(layers.MaxPooling2D()(mixed))]
    y = layers.Concatenate()([layers.GlobalAveragePooling2D()(r) for r in readers])
    return keras.Model(x, layers.Dense(16, name="head")(y))


def test_inception_block_permutes_every_branch_within_its_segment():
    model = inception_block()
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    mixed = [g for g in groups if "next_1x1" in g.consumer_names][0]
    assert mixed.skip_reason is None
    assert sorted(mixed.consumer_names) == ["next_1x1", "next_pool"]
    assert sorted(mixed.producer_names) == [
        "branch_1x1",
        "branch_3x3",
        "branch_5x5",
        "branch_pool",
    ]
    assert [s.size for s in mixed.segments] == [16, 24, 8, 16]
    # The head reads the concatenation of two pooled readers: segments too.
    head = [g for g in groups if "head" in g.consumer_names][0]
    assert sorted(head.producer_names) == ["next_1x1", "next_pool"]
    assert len(head.segments) == 2


def test_segments_that_are_not_multiples_of_4_leave_the_group_as_it_is():
    model = inception_block(widths=(16, 22, 10, 16))
    weights = {v.path: v.numpy() for v in model.weights}

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    reason = skip_reasons(groups)["next_1x1"]
    assert "joins segments of 16+22+10+16 channels, not all multiples of 4" in reason
    kernels = {v.path: v.numpy() for v in model.weights}
    # The readers are not C-permuted (the head's group moves their outputs),
    # the branches not K-permuted (the stem's group moves their inputs).
    for name, axis in [("next_1x1", -1), ("next_pool", -1), ("branch_1x1", -2)]:
        path = f"{name}/kernel"
        sorted_now = np.sort(kernels[path], axis=axis)
        np.testing.assert_array_equal(sorted_now, np.sort(weights[path], axis=axis))
    c_permuted, _ = permuted_sets(groups)
    assert {"next_1x1", "next_pool"}.isdisjoint(c_permuted)
    assert "branch_1x1" in c_permuted  # its own input still is


def test_summary_reports_the_segments_and_the_search_respects_them():
    model = dense_block(growth=16, depth=3)
    randomize_normalization(model)
    summary = permute_model(model, search_device="CPU", search_time_limit=5)
    assert summary.error <= TOLERANCE
    (block,) = [g for g in summary.groups if "transition" in g.consumers]
    assert "80 channels in segments 32+3x16" in str(block)
    assert block.magnitude >= block.identity_magnitude


def test_concatenating_one_tensor_twice_permutes_both_copies_alike():
    x = keras.Input((8, 8, 16))
    h = layers.ReLU()(conv(32, "producer", kernel=3)(x))
    twice = layers.Concatenate()([h, layers.MaxPooling2D(3, 1, "same")(h), h])
    model = keras.Model(x, conv(32, "consumer")(twice))

    groups, error = permute_randomly(model)

    assert error <= TOLERANCE
    (group,) = [g for g in groups if "consumer" in g.consumer_names]
    assert group.skip_reason is None
    assert [tuple(s) for s in group.segments] == [(0, 32)]  # one space, read 3 times
    assert sorted(p.offset for p in group.placements if p.variable.path == "consumer/kernel") == [
        0,
        32,
        64,
    ]


# keras.applications ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DenseNet121", "InceptionV3"])
def test_zoo_model_with_concatenations_is_permuted_and_pruned(name):
    """The real search through the wrapper: at least 90% of the prunable
    layers C-permuted, the function unchanged, every kernel 2:4 after a
    step."""
    model = getattr(keras.applications, name)(weights=None, input_shape=(96, 96, 3), classes=16)
    randomize_normalization(model)
    x = np.random.default_rng(0).standard_normal((2, 96, 96, 3)).astype("float32")

    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.SGD(1e-3), model, search_device="CPU", search_time_limit=1
    )

    summary = optimizer.permutation_summary
    prunable = prunable_layer_names(model)
    print(f"{name}: {len(summary.c_permuted)}/{len(prunable)} prunable layers C-permuted")
    assert len(summary.c_permuted) >= 0.9 * len(prunable)
    assert summary.error <= TOLERANCE
    assert any(len(g.segments) > 1 for g in summary.groups)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.fit(x, np.array([0, 1]), verbose=0)
    for gemm in registry.gemm_layers(model):
        for kernel in gemm.prunable_kernels():
            assert masks.is_2to4(kernel.variable.numpy(), kernel.input_axes), gemm.name
