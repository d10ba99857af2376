"""Transposable 2:4 masks: 2 of every 4 along the inputs and along the outputs
of every 4x4 block, the exact best of the 90 block patterns or a greedy one;
convolutions blocked tap by tap."""

import itertools

import numpy as np
import pytest

from tf_asp import masks
from tf_asp import transposable


def all_block_patterns():
    """Every 4x4 0/1 matrix, kept where each row and column holds exactly 2."""
    found = []
    for bits in itertools.product((0, 1), repeat=16):
        block = np.array(bits).reshape(4, 4)
        if np.all(block.sum(axis=0) == 2) and np.all(block.sum(axis=1) == 2):
            found.append(block)
    return found


def greedy_block(scores):
    """The greedy rule on one 4x4 block, written as plainly as possible."""
    keep = np.zeros((4, 4))
    order = sorted(range(16), key=lambda i: (-scores.ravel()[i], i))
    for index in order:
        row, column = divmod(index, 4)
        if keep[row].sum() < 2 and keep[:, column].sum() < 2:
            keep[row, column] = 1
    return keep


def blocks_of(matrix):
    """The 4x4 blocks of a (C, K) matrix, with their positions."""
    for i in range(0, matrix.shape[0], 4):
        for j in range(0, matrix.shape[1], 4):
            yield (i, j), matrix[i : i + 4, j : j + 4]


def test_there_are_90_block_patterns_each_2_per_row_and_column():
    patterns = transposable.block_patterns().reshape(-1, 4, 4)
    assert patterns.shape == (90, 4, 4)
    assert np.all(patterns.sum(axis=1) == 2) and np.all(patterns.sum(axis=2) == 2)
    assert len({p.tobytes() for p in patterns}) == 90
    assert {p.astype(int).tobytes() for p in patterns} == {
        p.astype(int).tobytes() for p in all_block_patterns()
    }


def test_best_keeps_the_heaviest_valid_pattern_of_every_block():
    kernel = np.random.default_rng(0).standard_normal((32, 16)).astype("float32")
    mask = transposable.transposable_mask(kernel, (0,), (1,), "best").numpy()
    patterns = all_block_patterns()
    for position, block in blocks_of(np.abs(kernel)):
        best = max(float((block * p).sum()) for p in patterns)
        kept = mask[position[0] : position[0] + 4, position[1] : position[1] + 4]
        assert float((block * kept).sum()) == pytest.approx(best, rel=1e-6)
    assert masks.is_transposable(kernel * mask, (0,), (1,))
    assert np.all(mask.reshape(8, 4, 16).sum(axis=1) == 2)  # 2 of 4 inputs
    assert np.all(mask.reshape(32, 4, 4).sum(axis=2) == 2)  # 2 of 4 outputs


def test_greedy_follows_the_greedy_rule_and_never_beats_best():
    kernel = np.random.default_rng(1).standard_normal((16, 32)).astype("float32")
    greedy = transposable.transposable_mask(kernel, (0,), (1,), "greedy").numpy()
    best = transposable.transposable_mask(kernel, (0,), (1,), "best").numpy()
    for (i, j), block in blocks_of(np.abs(kernel)):
        np.testing.assert_array_equal(greedy[i : i + 4, j : j + 4], greedy_block(block))
    assert masks.is_transposable(kernel * greedy, (0,), (1,))
    assert np.sum(np.abs(kernel) * greedy) <= np.sum(np.abs(kernel) * best) + 1e-4


@pytest.mark.parametrize("method", ["best", "greedy"])
def test_ties_are_deterministic(method):
    kernel = np.random.default_rng(2).integers(-1, 2, (16, 16)).astype("float32")
    first = transposable.transposable_mask(kernel, (0,), (1,), method).numpy()
    again = transposable.transposable_mask(kernel.copy(), (0,), (1,), method).numpy()
    np.testing.assert_array_equal(first, again)
    if method == "greedy":
        for (i, j), block in blocks_of(np.abs(kernel)):
            np.testing.assert_array_equal(first[i : i + 4, j : j + 4], greedy_block(block))
    else:  # equal sums go to the first of the 90 patterns
        flat = transposable.block_patterns()
        for (i, j), block in blocks_of(np.abs(kernel)):
            sums = flat @ block.ravel()
            expected = flat[int(np.argmax(sums))].reshape(4, 4)
            np.testing.assert_array_equal(first[i : i + 4, j : j + 4], expected)


@pytest.mark.parametrize("method", ["best", "greedy"])
def test_a_convolution_is_blocked_tap_by_tap_over_c_and_k(method):
    kernel = np.random.default_rng(3).standard_normal((3, 2, 16, 8)).astype("float32")
    mask = transposable.transposable_mask(kernel, (2,), (3,), method).numpy()
    for h, w in itertools.product(range(3), range(2)):
        tap = transposable.transposable_mask(kernel[h, w], (0,), (1,), method).numpy()
        np.testing.assert_array_equal(mask[h, w], tap)
    assert masks.is_transposable(kernel * mask, (2,), (3,))
    assert masks.is_2to4(kernel * mask)


def test_an_attention_kernel_flattens_its_input_and_output_axes():
    kernel = np.random.default_rng(4).standard_normal((4, 8, 16)).astype("float32")
    mask = transposable.transposable_mask(kernel, (0, 1), (2,)).numpy()
    gemm = transposable.transposable_mask(kernel.reshape(32, 16), (0,), (1,)).numpy()
    np.testing.assert_array_equal(mask.reshape(32, 16), gemm)
    assert masks.is_transposable(kernel * mask, (0, 1), (2,))


def test_transposable_keeps_less_than_1d_but_both_directions_are_2to4():
    kernel = np.random.default_rng(5).standard_normal((64, 64)).astype("float32")
    one_d = masks.mask_2to4(kernel, (0,)).numpy()
    two_d = transposable.transposable_mask(kernel, (0,), (1,)).numpy()
    assert np.sum(np.abs(kernel) * two_d) < np.sum(np.abs(kernel) * one_d)
    assert not masks.is_2to4(kernel * one_d, (1,))
    assert masks.is_2to4(kernel * two_d, (1,)) and masks.is_2to4(kernel * two_d, (0,))


def test_channels_that_are_not_multiples_of_4_are_refused():
    with pytest.raises(ValueError, match="multiples of 4"):
        transposable.transposable_mask(np.ones((18, 8)), (0,), (1,))
    assert not masks.is_transposable(np.zeros((18, 8)), (0,), (1,))


def test_is_transposable_needs_both_directions():
    assert masks.is_transposable(np.eye(8), (0,), (1,))
    rows_only = np.tile([1.0, 1.0, 0.0, 0.0], (4, 1))  # 2:4 along the outputs only
    assert masks.is_2to4(rows_only, (1,)) and not masks.is_transposable(rows_only, (0,), (1,))
