"""N:M masks: every pattern keeps exactly N of every M input channels, the
heaviest ones, ties to the lower channel; checks for any pattern."""

import itertools

import numpy as np
import pytest

from tf_asp import masks
from tf_asp.patterns import parse_pattern

PATTERNS = ["2:4", "1:2", "1:4", "3:4", "2:8", "4:8", "8:16", "4:16"]


def brute_force_mask(kernel, pattern):
    """Tries every N-subset of each group of M input channels (axis -2); keeps
    the heaviest, and of equal ones the lowest-indexed."""
    pattern = parse_pattern(pattern)
    moved = np.moveaxis(kernel, -2, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    mask = np.zeros_like(flat)
    for row, weights in enumerate(np.abs(flat)):
        for start in range(0, flat.shape[-1], pattern.m):
            group = range(start, min(start + pattern.m, flat.shape[-1]))
            best = max(
                itertools.combinations(group, pattern.kept(len(group))),
                key=lambda chosen: (weights[list(chosen)].sum(), [-c for c in chosen]),
            )
            mask[row, list(best)] = 1
    return np.moveaxis(mask.reshape(moved.shape), -1, -2)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("shape", [(32, 8), (3, 3, 16, 8), (16, 1)])
def test_each_pattern_keeps_exactly_n_of_every_m_input_channels(pattern, shape):
    kernel = np.random.default_rng(0).standard_normal(shape).astype("float32")
    mask = masks.nm_mask(kernel, pattern=pattern).numpy()
    n, m = parse_pattern(pattern).n, parse_pattern(pattern).m
    groups = np.moveaxis(mask, -2, -1).reshape(shape[:-2] + shape[-1:] + (-1, m))
    assert np.all(groups.sum(axis=-1) == n)
    np.testing.assert_array_equal(mask, brute_force_mask(kernel, pattern))
    assert masks.is_nm(kernel * mask, pattern=pattern)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_ties_break_towards_the_lower_channel_for_every_pattern(pattern):
    # Small integers make equal magnitudes common.
    kernel = np.random.default_rng(1).integers(-2, 3, (48, 6)).astype("float32")
    mask = masks.nm_mask(kernel, pattern=pattern).numpy()
    np.testing.assert_array_equal(mask, brute_force_mask(kernel, pattern))
    np.testing.assert_array_equal(mask, masks.nm_mask(kernel, pattern=pattern).numpy())


@pytest.mark.parametrize("pattern, channels", [("4:8", 13), ("1:4", 6), ("8:16", 20)])
def test_a_last_partial_group_keeps_its_share_rounded_up(pattern, channels):
    kernel = np.random.default_rng(2).standard_normal((channels, 8)).astype("float32")
    mask = masks.nm_mask(kernel, pattern=pattern).numpy()
    np.testing.assert_array_equal(mask, brute_force_mask(kernel, pattern))
    assert masks.is_nm(kernel * mask, pattern=pattern)


def test_the_2to4_names_are_the_2_4_pattern():
    kernel = np.random.default_rng(3).standard_normal((3, 3, 32, 16))
    np.testing.assert_array_equal(masks.mask_2to4(kernel), masks.nm_mask(kernel))
    assert masks.is_2to4(kernel * masks.mask_2to4(kernel).numpy())


def test_scores_choose_the_weights_not_their_magnitudes():
    kernel = np.array([[4.0], [3.0], [2.0], [1.0]])
    scores = np.abs(kernel) * np.array([[1.0], [1.0], [10.0], [10.0]])
    np.testing.assert_array_equal(masks.nm_mask(scores).numpy().ravel(), [0, 0, 1, 1])


def test_is_nm_checks_the_pattern_it_is_given():
    kernel = np.array([[1.0], [0.0], [0.0], [0.0], [2.0], [3.0], [0.0], [0.0]])
    assert masks.is_nm(kernel, pattern="2:4")
    assert not masks.is_nm(kernel, pattern="1:4")
    assert masks.is_nm(kernel, pattern="4:8") and masks.is_nm(kernel, pattern="3:8")
    assert not masks.is_nm(kernel, pattern="2:8")
    assert not masks.is_nm(kernel, pattern="1:2")


def test_mask_spec_refuses_transposable_masks_for_other_patterns():
    with pytest.raises(ValueError, match="Transposable masks are 2:4"):
        masks.MaskSpec((0,), (1,), "4:8", transposable=True)
    with pytest.raises(ValueError, match="transposable='yes'"):
        masks.MaskSpec((0,), (1,), "2:4", transposable="yes")
    with pytest.raises(ValueError, match="not N:M"):
        masks.MaskSpec((0,), (1,), "2/4")
