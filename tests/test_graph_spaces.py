"""Channel spaces (concatenations, heads, pins) and where ops move channel axes."""

import pytest

from tf_asp.graph import axes
from tf_asp.graph.spaces import ChannelSpaces
from tf_asp.graph.spaces import format_sizes


def spaces_of(**sizes):
    spaces = ChannelSpaces()
    for key, size in sizes.items():
        spaces.add(key, size)
    return spaces


def test_a_concatenation_is_its_parts_side_by_side():
    spaces = spaces_of(x=64, a=32, b=16, c=16)
    spaces.concatenate("x", ["a", "b", "c"])
    assert spaces.leaves("x") == [("a", 0), ("b", 32), ("c", 48)]


def test_nested_concatenations_flatten_to_their_leaves():
    spaces = spaces_of(x1=48, x2=64, x0=32, y1=16, y2=16)
    spaces.concatenate("x1", ["x0", "y1"])
    spaces.concatenate("x2", ["x1", "y2"])  # a DenseNet block
    assert spaces.leaves("x2") == [("x0", 0), ("y1", 32), ("y2", 48)]


def test_joining_two_concatenations_joins_their_parts():
    spaces = spaces_of(x=64, y=64, a=32, b=32, c=32, d=32)
    spaces.concatenate("x", ["a", "b"])
    spaces.concatenate("y", ["c", "d"])
    assert spaces.union("x", "y")
    assert spaces.find("a") == spaces.find("c") and spaces.find("b") == spaces.find("d")
    assert spaces.leaf_pins() == {}


def test_splitting_into_heads_makes_equal_parts_once():
    spaces = spaces_of(v=64)
    heads = spaces.split("v", 4)
    assert [spaces.size(h) for h in heads] == [16] * 4
    assert spaces.split("v", 4) == heads
    assert [offset for _, offset in spaces.leaves("v")] == [0, 16, 32, 48]


def test_channels_split_two_ways_are_pinned():
    spaces = spaces_of(x=64, a=32, b=32)
    spaces.concatenate("x", ["a", "b"])
    assert spaces.split("x", 4) is None
    pins = spaces.leaf_pins()
    assert pins["a"] == pins["b"] == ["its channels are split two ways (2x32 and 4x16)"]


def test_pinning_a_concatenation_pins_every_leaf_not_the_other_way():
    spaces = spaces_of(x=64, a=32, b=32, z=32)
    spaces.concatenate("x", ["a", "b"])
    spaces.pin("x", "model output")
    spaces.pin("z", "unsupported op")
    spaces.union("b", "z")
    assert spaces.leaf_pins() == {
        "a": ["model output"],
        spaces.find("b"): ["unsupported op", "model output"],
    }


def test_spaces_of_different_sizes_do_not_join():
    spaces = spaces_of(a=32, b=16)
    assert not spaces.union("a", "b")
    assert spaces.find("a") != spaces.find("b")
    with pytest.raises(ValueError, match="do not make"):
        spaces.concatenate("a", ["b"])


def test_sizes_are_written_as_runs():
    assert format_sizes([512] + [32] * 16) == "512+16x32"
    assert format_sizes([16, 24, 8, 16]) == "16+24+8+16"


# Channel axes through ops ------------------------------------------------------


@pytest.mark.parametrize(
    "in_shape, channel_axes, out_shape, expected",
    [
        ((2, 16, 64), (2,), (2, 16, 4, 16), (2, 3)),  # split into heads
        ((2, 16, 4, 16), (2, 3), (2, 16, 64), (2,)),  # merge them back
        ((2, 16, 64), (2,), (32, 64), (1,)),  # Dense's Tensordot
        ((2, 16, 64), (2,), (2, 1, 16, 64), (3,)),  # Conv1D's ExpandDims
        ((2, 16, 64), (2,), (2, 32, 32), None),  # channels into the tokens
        ((2, 16, 64), (2,), (2, 1024), None),  # tokens into the channels
        ((2, 4, 16, 16), (1, 3), (2, 4, 256), None),  # heads not trailing
    ],
)
def test_reshapes_carry_trailing_channel_axes(in_shape, channel_axes, out_shape, expected):
    assert axes.reshape_axes(in_shape, channel_axes, out_shape) == expected


def test_kernel_axes_through_reshapes_and_transposes():
    groups = [(0,), (1,), (2,)]
    assert axes.regroup((64, 4, 16), groups, (64, 64)) == [(0,), (1, 2)]
    assert axes.regroup((3, 32, 64), groups, (1, 3, 32, 64)) == [(), (0,), (1,), (2,)]
    assert axes.regroup((64, 64), [(0,), (1,)], (64, 4, 16)) is None  # splits an axis


def test_attention_products_carry_the_values_within_their_heads():
    scores = (["btnh", "bsnh"], "bnts")
    assert axes.product_channels(*scores, 0, (2, 3), (2, 16, 4, 8)) == "contracts its channels"
    weighted = (["bnts", "bsnh"], "btnh")
    assert axes.product_channels(*weighted, 1, (2, 3), (2, 16, 4, 8)) == ((2, 3), 4)
    assert axes.product_channels(*weighted, 1, (3, 2), (2, 16, 4, 8)) == (
        "interleaves heads with channels"
    )
    assert axes.product_channels(["bn", "bn"], "bn", 0, (1,), (2, 8)) == (
        "pairs every channel with the other operand"
    )


def test_softmax_and_reductions_work_within_heads():
    assert axes.heads_of((2, 3), {3}, (2, 16, 4, 8)) == 4  # over head_dim, per head
    assert axes.heads_of((2,), {2}, (2, 16, 64)) == 1  # over all channels
    assert axes.heads_of((2, 3), {2}, (2, 16, 4, 8)) is None  # across heads
