"""What a 2:4 mask keeps, the bound no permutation beats, and the stripe-group
window tables the search enumerates: checked against plain Python."""

import itertools

import numpy as np
import pytest

from tf_asp import search
from tf_asp.search import metrics
from tf_asp.search import windows

SHAPES = [(1, 4), (3, 8), (7, 12), (16, 32), (33, 20)]


def reference_matrix():
    """The published tool's default random matrix: 128 outputs x 64 channels."""
    return np.random.RandomState(1).rand(128, 64)


def random_matrix(shape, seed=0):
    """Signed values, so that magnitudes (not values) must be compared."""
    return np.random.default_rng(seed).standard_normal(shape)


def python_kept(matrix, permutation=None):
    """Row by row, group of 4 by group of 4: the two largest |w| of each."""
    rows, cols = len(matrix), len(matrix[0])
    order = list(range(cols)) if permutation is None else list(permutation)
    total = 0.0
    for r in range(rows):
        for start in range(0, cols, 4):
            group = sorted(abs(float(matrix[r][order[c]])) for c in range(start, start + 4))
            total += group[2] + group[3]
    return total


def python_rows_half(matrix):
    total = 0.0
    for row in matrix:
        ordered = sorted(abs(float(v)) for v in row)
        total += sum(ordered[len(ordered) // 2 :])
    return total


def python_unstructured(matrix, sparsity=0.5):
    ordered = sorted(abs(float(v)) for row in matrix for v in row)
    return sum(ordered[int(round(sparsity * len(ordered))) :])


# --- metrics against brute force -------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_kept_magnitude_keeps_the_two_largest_of_every_four(shape):
    matrix = random_matrix(shape)
    assert metrics.kept_magnitude(matrix) == pytest.approx(python_kept(matrix), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_kept_magnitude_permutes_columns_first(shape):
    matrix = random_matrix(shape, seed=1)
    permutation = np.random.default_rng(2).permutation(shape[1])
    assert metrics.kept_magnitude(matrix, permutation) == pytest.approx(
        python_kept(matrix, permutation), rel=1e-12
    )
    assert metrics.kept_magnitude(matrix, permutation) == pytest.approx(
        metrics.kept_magnitude(matrix[:, permutation]), rel=1e-12
    )


def test_kept_magnitude_handles_ties_and_zeros():
    """Equal magnitudes still keep exactly two of each group."""
    matrix = np.array(
        [
            [1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            [2.0, 0.0, -2.0, 0.0, 3.0, 3.0, -3.0, 3.0],
        ]
    )
    assert metrics.kept_magnitude(matrix) == 2.0 + 0.0 + 4.0 + 6.0


@pytest.mark.parametrize("shape", SHAPES)
def test_rows_half_magnitude_keeps_the_largest_half_of_each_row(shape):
    matrix = random_matrix(shape, seed=3)
    assert metrics.rows_half_magnitude(matrix) == pytest.approx(python_rows_half(matrix), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_rows_half_magnitude_bounds_every_permutation(shape):
    matrix = random_matrix(shape, seed=4)
    bound = metrics.rows_half_magnitude(matrix)
    rng = np.random.default_rng(5)
    for _ in range(20):
        assert metrics.kept_magnitude(matrix, rng.permutation(shape[1])) <= bound + 1e-9


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_unstructured_magnitude_prunes_the_smallest_fraction_of_all(shape, sparsity):
    matrix = random_matrix(shape, seed=6)
    assert metrics.unstructured_magnitude(matrix, sparsity) == pytest.approx(
        python_unstructured(matrix, sparsity), rel=1e-12
    )


def test_efficacy_is_the_share_of_the_room_between_identity_and_bound():
    assert metrics.efficacy(150.0, 100.0, 200.0) == 50.0
    assert metrics.efficacy(100.0, 100.0, 200.0) == 0.0
    assert metrics.efficacy(200.0, 100.0, 200.0) == 100.0
    assert metrics.efficacy(90.0, 100.0, 200.0) == -10.0


def test_efficacy_is_zero_when_there_is_no_room():
    assert metrics.efficacy(100.0, 100.0, 100.0) == 0.0
    assert metrics.efficacy(100.0, 100.0, 99.0) == 0.0


@pytest.mark.parametrize("shape", SHAPES)
def test_efficacy_of_random_permutations_matches_its_definition(shape):
    matrix = random_matrix(shape, seed=7)
    identity, bound = python_kept(matrix), python_rows_half(matrix)
    permutation = np.random.default_rng(8).permutation(shape[1])
    kept = python_kept(matrix, permutation)
    expected = 0.0 if bound <= identity else 100 * (kept - identity) / (bound - identity)
    got = metrics.efficacy(
        metrics.kept_magnitude(matrix, permutation),
        metrics.kept_magnitude(matrix),
        metrics.rows_half_magnitude(matrix),
    )
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_reference_matrix_reproduces_the_published_numbers():
    """The numbers the published ChannelPermutations tool prints."""
    matrix = reference_matrix()
    assert round(float(np.abs(matrix).sum()), 3) == 4083.169
    assert round(metrics.rows_half_magnitude(matrix), 3) == 3042.332
    assert round(metrics.kept_magnitude(matrix), 3) == 2852.377
    assert round(metrics.unstructured_magnitude(matrix), 3) == 3060.238


def test_metrics_are_exported_by_the_package():
    matrix = reference_matrix()
    assert search.kept_magnitude(matrix) == metrics.kept_magnitude(matrix)
    assert search.rows_half_magnitude(matrix) == metrics.rows_half_magnitude(matrix)
    assert search.unstructured_magnitude(matrix) == metrics.unstructured_magnitude(matrix)
    assert search.efficacy(2.0, 1.0, 3.0) == 50.0


# --- the exact integer scores the kernels use ------------------------------


def test_quantize_scales_the_largest_magnitude_to_the_kernel_maximum():
    matrix = random_matrix((6, 8), seed=9)
    quantized = metrics.quantize(matrix)
    assert quantized.dtype == np.int32 and quantized.shape == (8, 6)
    assert quantized.flags.c_contiguous
    assert quantized.min() >= 0 and quantized.max() == metrics.MAX_QUANTIZED
    # Rounded to the nearest step of largest / MAX_QUANTIZED.
    np.testing.assert_allclose(
        quantized.T / metrics.MAX_QUANTIZED,
        np.abs(matrix) / np.abs(matrix).max(),
        rtol=0,
        atol=0.5 / metrics.MAX_QUANTIZED + 1e-12,
    )


def test_quantize_of_an_all_zero_matrix_is_zero():
    assert not metrics.quantize(np.zeros((3, 8))).any()


def test_quantized_score_is_kept_magnitude_of_the_quantized_matrix():
    matrix = random_matrix((10, 16), seed=10)
    quantized = metrics.quantize(matrix)
    permutation = np.random.default_rng(11).permutation(16)
    assert metrics.quantized_score(quantized, permutation) == round(
        python_kept(quantized.T.astype(np.float64), permutation)
    )


# --- window tables ---------------------------------------------------------


@pytest.mark.parametrize("window, count", [(4, 1), (8, 35), (12, 5775)])
def test_window_tables_hold_every_partition_once(window, count):
    quads, partitions = windows.window_tables(window)
    assert partitions.shape == (count, window // 4)
    assert windows.partition_count(window) == count
    as_sets = {frozenset(frozenset(quads[q].tolist()) for q in row) for row in partitions}
    assert len(as_sets) == count, "two partitions split the window the same way"


def test_partition_count_of_16_is_known_without_building_the_table():
    assert windows.partition_count(16) == 2627625


@pytest.mark.parametrize("window", [8, 12])
def test_quads_are_every_4_subset_in_lexicographic_order(window):
    quads, _ = windows.window_tables(window)
    assert quads.dtype == np.int32
    assert [tuple(q) for q in quads.tolist()] == list(itertools.combinations(range(window), 4))


@pytest.mark.parametrize("window", [8, 12])
def test_partition_zero_is_the_identity(window):
    quads, partitions = windows.window_tables(window)
    identity = [list(range(4 * k, 4 * k + 4)) for k in range(window // 4)]
    assert quads[partitions[0]].tolist() == identity


@pytest.mark.parametrize("window", [8, 12])
def test_every_partition_covers_each_window_position_exactly_once(window):
    quads, partitions = windows.window_tables(window)
    positions = np.sort(quads[partitions].reshape(len(partitions), -1), axis=1)
    assert partitions.dtype == np.int32
    assert (positions == np.arange(window)).all()


@pytest.mark.parametrize("window", [8, 12])
def test_partitions_are_in_canonical_order(window):
    """Quads sorted by first position within a partition, partitions sorted:
    every backend's "first partition reaching the best" is the same one."""
    quads, partitions = windows.window_tables(window)
    firsts = quads[partitions][:, :, 0]
    assert (np.diff(firsts, axis=1) > 0).all()
    rows = [tuple(row) for row in partitions.tolist()]
    assert rows == sorted(rows)


@pytest.mark.parametrize("window", [0, 2, 6, 10, 20, -8])
def test_window_tables_reject_unsupported_windows(window):
    with pytest.raises(ValueError, match="window must be 4, 8, 12 or 16"):
        windows.window_tables(window)


# --- every N:M pattern ----------------------------------------------------------

PATTERNS = ["1:2", "2:4", "1:4", "3:4", "2:8", "4:8", "8:16", "15:16"]
PATTERN_SHAPES = [(1, 16), (5, 32), (33, 48)]


def python_kept_nm(matrix, pattern, permutation=None):
    """Row by row, group of M by group of M: the N largest |w| of each."""
    n, m = (int(v) for v in pattern.split(":"))
    cols = len(matrix[0])
    order = list(range(cols)) if permutation is None else list(permutation)
    total = 0.0
    for row in matrix:
        for start in range(0, cols, m):
            group = sorted(abs(float(row[order[c]])) for c in range(start, start + m))
            total += sum(group[m - n :])
    return total


def python_row_bound(matrix, pattern):
    """Each row keeps its largest N/M fraction, wherever those entries are."""
    n, m = (int(v) for v in pattern.split(":"))
    total = 0.0
    for row in matrix:
        ordered = sorted((abs(float(v)) for v in row), reverse=True)
        total += sum(ordered[: len(row) * n // m])
    return total


@pytest.mark.parametrize("shape", PATTERN_SHAPES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_kept_magnitude_keeps_the_n_largest_of_every_m(pattern, shape):
    matrix = random_matrix(shape, seed=12)
    permutation = np.random.default_rng(13).permutation(shape[1])
    assert metrics.kept_magnitude(matrix, pattern=pattern) == pytest.approx(
        python_kept_nm(matrix, pattern), rel=1e-12
    )
    assert metrics.kept_magnitude(matrix, permutation, pattern) == pytest.approx(
        python_kept_nm(matrix, pattern, permutation), rel=1e-12
    )


@pytest.mark.parametrize("pattern", PATTERNS)
def test_kept_magnitude_of_ties_keeps_exactly_n_per_group(pattern):
    n, m = (int(v) for v in pattern.split(":"))
    matrix = np.tile(np.array([3.0] * (m // 2) + [-3.0] * (m - m // 2)), (2, 2))
    assert metrics.kept_magnitude(matrix, pattern=pattern) == 2 * 2 * n * 3.0


@pytest.mark.parametrize("shape", PATTERN_SHAPES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_row_bound_keeps_the_largest_n_over_m_of_each_row_and_bounds_every_order(pattern, shape):
    matrix = random_matrix(shape, seed=14)
    bound = metrics.row_bound_magnitude(matrix, pattern)
    assert bound == pytest.approx(python_row_bound(matrix, pattern), rel=1e-12)
    rng = np.random.default_rng(15)
    for _ in range(10):
        kept = metrics.kept_magnitude(matrix, rng.permutation(shape[1]), pattern)
        assert kept <= bound + 1e-9


@pytest.mark.parametrize("pattern", PATTERNS)
def test_permutation_efficacy_matches_its_definition(pattern):
    matrix = random_matrix((7, 32), seed=16)
    permutation = np.random.default_rng(17).permutation(32)
    identity = python_kept_nm(matrix, pattern)
    kept = python_kept_nm(matrix, pattern, permutation)
    bound = python_row_bound(matrix, pattern)
    expected = 100 * (kept - identity) / (bound - identity)
    got = metrics.permutation_efficacy(matrix, permutation, pattern)
    assert got == pytest.approx(expected, rel=1e-9)
    assert search.permutation_efficacy is metrics.permutation_efficacy


@pytest.mark.parametrize("pattern", PATTERNS)
def test_quantized_score_is_kept_magnitude_of_the_quantized_matrix_for_every_pattern(pattern):
    matrix = random_matrix((9, 32), seed=18)
    quantized = metrics.quantize(matrix)
    permutation = np.random.default_rng(19).permutation(32)
    expected = round(python_kept_nm(quantized.T.astype(np.float64), pattern, permutation))
    assert metrics.quantized_score(quantized, permutation, pattern) == expected


def test_2_4_is_the_default_pattern_bit_for_bit():
    matrix = reference_matrix()
    permutation = np.random.default_rng(20).permutation(64)
    assert metrics.kept_magnitude(matrix, permutation) == metrics.kept_magnitude(
        matrix, permutation, "2:4"
    )
    assert metrics.kept_magnitude(matrix, permutation, (2, 4)) == metrics.kept_magnitude(
        matrix, permutation
    )
    assert metrics.rows_half_magnitude(matrix) == metrics.row_bound_magnitude(matrix)
    assert metrics.row_bound_magnitude(matrix, "2:4") == metrics.row_bound_magnitude(matrix, "1:2")
    quantized = metrics.quantize(matrix)
    assert metrics.quantized_score(quantized, permutation) == metrics.quantized_score(
        quantized, permutation, "2:4"
    )


def test_reference_matrix_bounds_per_pattern():
    """Half of each row for 2:4, 1:2, 4:8 and 8:16; a quarter for 1:4."""
    matrix = reference_matrix()
    for pattern in ("2:4", "1:2", "4:8", "8:16"):
        assert round(metrics.row_bound_magnitude(matrix, pattern), 3) == 3042.332
    assert metrics.row_bound_magnitude(matrix, "1:4") < metrics.row_bound_magnitude(matrix, "2:4")
    assert round(metrics.kept_magnitude(matrix, pattern="2:4"), 3) == 2852.377


@pytest.mark.parametrize(
    "pattern, cols, message",
    [
        ("8:16", 24, "24 columns; 8:16 sparsity needs a multiple of 16"),
        ("4:8", 12, "12 columns; 4:8 sparsity needs a multiple of 8"),
        ("1:2", 7, "7 columns; 1:2 sparsity needs a multiple of 2"),
        ("2:4", 10, "10 columns; 2:4 sparsity needs a multiple of 4"),
    ],
)
def test_check_matrix_needs_whole_groups_of_m(pattern, cols, message):
    with pytest.raises(ValueError, match=message):
        metrics.check_matrix(np.ones((3, cols)), pattern=pattern)


def test_metrics_refuse_bad_patterns():
    with pytest.raises(ValueError, match="N must be smaller than M"):
        metrics.kept_magnitude(np.ones((2, 8)), pattern="4:4")
    with pytest.raises(ValueError, match="is not N:M"):
        metrics.row_bound_magnitude(np.ones((2, 8)), "2-4")


# --- window tables per stripe width ------------------------------------------------


@pytest.mark.parametrize(
    "window, m, count", [(4, 2, 3), (8, 2, 105), (12, 2, 10395), (16, 8, 6435), (16, 16, 1)]
)
def test_window_tables_of_every_stripe_width_hold_every_partition_once(window, m, count):
    subsets, partitions = windows.window_tables(window, m)
    assert partitions.shape == (count, window // m) and partitions.dtype == np.int32
    assert windows.partition_count(window, m) == count
    assert [tuple(s) for s in subsets.tolist()] == list(itertools.combinations(range(window), m))
    as_sets = {frozenset(frozenset(subsets[q].tolist()) for q in row) for row in partitions}
    assert len(as_sets) == count, "two partitions split the window the same way"
    positions = np.sort(subsets[partitions].reshape(count, -1), axis=1)
    assert (positions == np.arange(window)).all()
    identity = [list(range(m * k, m * k + m)) for k in range(window // m)]
    assert subsets[partitions[0]].tolist() == identity
    rows = [tuple(row) for row in partitions.tolist()]
    assert rows == sorted(rows)


def test_stripe_widths_have_their_windows():
    assert windows.WINDOWS == {2: (8, 12, 16), 4: (8, 12, 16), 8: (16,), 16: ()}
    assert windows.partition_count(16, 2) == 2027025
    assert windows.partition_count(32, 16) == 300540195  # why 8:16 has no stripe groups


@pytest.mark.parametrize("window, m", [(12, 8), (6, 4), (18, 2), (8, 3), (8, 32)])
def test_window_tables_reject_windows_that_do_not_fit_the_stripes(window, m):
    with pytest.raises(ValueError, match="window must be|stripe is 2, 4, 8 or 16"):
        windows.window_tables(window, m)
