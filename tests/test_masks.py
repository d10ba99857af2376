"""The 2:4 mask: which weights survive, and which layers are pruned at all."""

import itertools

import numpy as np
import pytest

from tf_asp import masks

pytestmark = pytest.mark.usefixtures("fresh_keras")


def brute_force_mask(kernel):
    """Tries every subset of each group; keeps the heaviest, lowest-indexed."""
    moved = np.moveaxis(kernel, -2, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    mask = np.zeros_like(flat)
    channels = flat.shape[-1]
    for row, weights in enumerate(np.abs(flat)):
        for start in range(0, channels, 4):
            group = range(start, min(start + 4, channels))
            keep = min(2, (len(group) + 1) // 2)
            best = max(
                itertools.combinations(group, keep),
                key=lambda chosen: (weights[list(chosen)].sum(), [-c for c in chosen]),
            )
            mask[row, list(best)] = 1
    return np.moveaxis(mask.reshape(moved.shape), -1, -2)


SHAPES = [(16, 8), (64, 24), (4, 1), (3, 3, 16, 8), (1, 1, 32, 16), (2, 5, 8, 3)]
PADDED_SHAPES = [(7, 8), (18, 8), (1, 4), (6, 2)]


@pytest.mark.parametrize("shape", SHAPES + PADDED_SHAPES)
def test_mask_matches_brute_force_on_random_kernels(shape):
    kernel = np.random.default_rng(0).standard_normal(shape).astype("float32")
    np.testing.assert_array_equal(masks.mask_2to4(kernel), brute_force_mask(kernel))


@pytest.mark.parametrize("shape", SHAPES + PADDED_SHAPES)
def test_ties_break_towards_the_lower_channel(shape):
    # Small integers make equal magnitudes common.
    kernel = np.random.default_rng(1).integers(-2, 3, shape).astype("float32")
    np.testing.assert_array_equal(masks.mask_2to4(kernel), brute_force_mask(kernel))


def test_mask_keeps_two_of_every_four_along_the_input_axis():
    kernel = np.random.default_rng(2).standard_normal((3, 3, 32, 16))
    mask = np.asarray(masks.mask_2to4(kernel))
    groups = np.moveaxis(mask, 2, -1).reshape(3, 3, 16, 8, 4)
    assert np.all(groups.sum(axis=-1) == 2)
    assert mask.dtype == kernel.dtype


def test_partial_group_keeps_half_rounded_up():
    kernel = np.array([[5.0], [1.0], [2.0], [3.0], [9.0], [8.0], [7.0]])
    kept = np.asarray(masks.mask_2to4(kernel)).ravel()
    np.testing.assert_array_equal(kept, [1, 0, 0, 1, 1, 1, 0])


def test_is_2to4_accepts_only_the_structured_pattern():
    assert masks.is_2to4(np.array([[1.0], [0.0], [3.0], [0.0]]))
    assert not masks.is_2to4(np.array([[1.0], [2.0], [3.0], [0.0]]))
    # A 2:4 pattern along the *output* axis is not 2:4 along the input axis.
    assert not masks.is_2to4(np.array([[1.0, 0.0, 1.0, 0.0]] * 4))
    # A partial group of 2 may keep only 1.
    assert masks.is_2to4(np.array([[1.0], [0.0], [0.0], [2.0], [1.0], [0.0]]))
    assert not masks.is_2to4(np.array([[1.0], [0.0], [0.0], [2.0], [1.0], [1.0]]))


@pytest.mark.parametrize(
    "shape, input_axes",
    [((4, 16, 8), (0, 1)), ((32, 4, 8), (0,)), ((3, 16, 8), (1,))],
    ids=["attention_output", "query", "conv1d"],
)
def test_mask_along_several_input_axes_is_the_mask_of_the_flattened_gemm(shape, input_axes):
    kernel = np.random.default_rng(0).standard_normal(shape).astype("float32")
    mask = masks.mask_2to4(kernel, input_axes).numpy()
    inputs = [a for a in range(len(shape)) if a in input_axes]
    others = [a for a in range(len(shape)) if a not in input_axes]
    gemm = kernel.transpose(inputs + others).reshape(-1, int(np.prod([shape[a] for a in others])))
    expected = brute_force_mask(gemm).reshape([shape[a] for a in inputs + others])
    np.testing.assert_array_equal(mask, expected.transpose(np.argsort(inputs + others)))
    assert masks.is_2to4(kernel * mask, input_axes)
