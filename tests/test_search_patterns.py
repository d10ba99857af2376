"""Every N:M pattern, end to end: each backend returns the same permutation
for every pattern and strategy, the kernels agree with the reference and
stay exact at the largest magnitudes, exhaustive search finds the true
optimum, the search optimises for the pattern it is given, and what a
pattern cannot do is a clear error. (2:4 alone: the other test_search_*.)"""

import ctypes
import itertools

import numpy as np
import pytest
from test_search_backends import assert_column_swaps_agree
from test_search_backends import assert_stripe_groups_agree
from test_search_backends import cuda_library
from test_search_backends import tied_matrix
from test_search_strategies import ALL_ORDERS_OF_8
from test_search_strategies import assert_consistent
from test_search_strategies import quantization_slack
from test_search_strategies import random_matrix
from test_search_strategies import reference_matrix

from tf_asp import search
from tf_asp.patterns import parse_pattern
from tf_asp.search import metrics
from tf_asp.search import native
from tf_asp.search.reference import ReferenceSearch
from tf_asp.search.windows import window_tables


@pytest.fixture(autouse=True)
def _seeded():
    """Overrides conftest's Keras reset (0.2 s a test): the search uses no
    Keras, and every test here seeds its own NumPy generator."""
    yield


@pytest.fixture
def cpu_library():
    return native.load_library("CPU")


# --- every backend returns the same permutation ------------------------------

# (pattern, strategy) pairs, each stripe-group window the pattern has at its
# cheapest, and channel swaps with and without escapes.
PATTERN_CASES = [
    ("1:2", "optimize_stripe_groups,8,2"),
    ("1:2", "channel_swap,3"),
    ("2:4", "optimize_stripe_groups,12,1"),
    ("1:4", "optimize_stripe_groups,8,3"),
    ("1:4", "channel_swap,3"),
    ("3:4", "optimize_stripe_groups,8,3"),
    ("2:8", "optimize_stripe_groups,16,0"),
    ("2:8", "channel_swap,3"),
    ("4:8", "optimize_stripe_groups,16,1"),
    ("4:8", "channel_swap,3"),
    ("8:16", "channel_swap,3"),
    ("3:16", "channel_swap,0"),
]


def pattern_agreement_matrix(pattern, seed):
    """Few rows for M = 8 (its window scores 12870 subsets in NumPy)."""
    rows = 4 if pattern.endswith(":8") else 20
    return random_matrix((rows, 32), seed=seed)


@pytest.mark.parametrize("pattern, strategy", PATTERN_CASES)
def test_cpu_and_numpy_backends_return_identical_permutations_for_every_pattern(pattern, strategy):
    for seed, make in ((1, pattern_agreement_matrix), (2, None)):
        matrix = make(pattern, seed) if make else tied_matrix((5, 32), seed=seed)
        on_cpu = search.find_permutation(matrix, strategy, device="CPU", seed=3, pattern=pattern)
        on_numpy = search.find_permutation(
            matrix, strategy, device="numpy", seed=3, pattern=pattern
        )
        assert (on_cpu.backend, on_numpy.backend) == ("CPU", "numpy")
        assert str(on_cpu.pattern) == str(on_numpy.pattern) == pattern
        np.testing.assert_array_equal(on_cpu.permutation, on_numpy.permutation)
        assert on_cpu.magnitude == on_numpy.magnitude


@pytest.mark.parametrize("pattern", ["1:2", "1:4", "3:4", "2:8", "4:8", "8:16"])
def test_exhaustive_agrees_across_backends_for_every_pattern(pattern):
    cols = 16 if parse_pattern(pattern).m >= 8 else 12  # two stripes of 8 at least
    matrix = random_matrix((5, cols), seed=4)
    on_cpu = search.exhaustive(matrix, pattern=pattern, device="CPU")
    on_numpy = search.exhaustive(matrix, pattern=pattern, device="numpy")
    np.testing.assert_array_equal(on_cpu.permutation, on_numpy.permutation)


# --- the kernels agree with the reference, exactly ----------------------------

# (pattern, window) of every stripe width; rows that are not a multiple of
# the kernels' row blocks.
PATTERN_KERNEL_CASES = [
    ("1:2", 8),
    ("1:2", 12),
    ("1:4", 8),
    ("3:4", 12),
    ("2:8", 16),
    ("4:8", 16),
    ("7:8", 16),
]


@pytest.mark.parametrize("pattern, window", PATTERN_KERNEL_CASES)
@pytest.mark.parametrize("shape, make", [((37, 32), random_matrix), ((12, 48), tied_matrix)])
def test_cpu_stripe_groups_kernel_matches_the_reference_for_every_pattern(
    cpu_library, pattern, window, shape, make
):
    count = 6 if window == 16 else 40
    assert_stripe_groups_agree(cpu_library, make(shape, seed=7), window, 8, pattern, count)


@pytest.mark.parametrize("pattern", ["1:2", "1:4", "3:4", "2:8", "4:8", "8:16", "15:16"])
@pytest.mark.parametrize("shape, make", [((37, 32), random_matrix), ((12, 48), tied_matrix)])
def test_cpu_column_swaps_kernel_matches_the_reference_for_every_pattern(
    cpu_library, pattern, shape, make
):
    assert_column_swaps_agree(cpu_library, make(shape, seed=9), seed=10, pattern=pattern)


LARGEST_MAGNITUDE_CASES = [("2:4", 8), ("1:2", 8), ("4:8", 16), ("7:8", 16)]


@pytest.mark.parametrize("pattern, window", LARGEST_MAGNITUDE_CASES)
def test_cpu_stripe_group_gains_stay_exact_at_the_largest_magnitudes(cpu_library, pattern, window):
    assert_exact_at_the_largest_magnitudes(cpu_library, pattern, window)


def assert_exact_at_the_largest_magnitudes(library, pattern, window):
    """Thousands of rows of the largest magnitude in one stripe, zeros in the
    others: summed over too many rows in 32 bits, that stripe's score would
    overflow once in the identity and twice when split in two."""
    n, m = parse_pattern(pattern).n, parse_pattern(pattern).m
    rows = 4096
    matrix = np.zeros((rows, window))
    matrix[:, m : 2 * m] = 1.0  # quantized to MAX_QUANTIZED
    magnitudes = metrics.quantize(matrix)
    with library.search(magnitudes, window, None, pattern) as kernel:
        gains, best = kernel.stripe_groups(
            np.arange(window, dtype=np.int32), np.arange(window // m, dtype=np.int32)[None]
        )
    # Split k : m - k across two stripes, each keeps min(n, its share) per row.
    expected = rows * (min(2 * n, m) - n) * metrics.MAX_QUANTIZED
    assert gains[0] == expected > 2**31
    subsets, partitions = window_tables(window, m)
    arranged = subsets[partitions[best[0]]].ravel()
    identity = metrics.quantized_score(magnitudes, np.arange(window), pattern)
    assert metrics.quantized_score(magnitudes, arranged, pattern) == identity + expected


@pytest.mark.parametrize("pattern", ["2:4", "1:2", "7:8", "15:16"])
def test_cpu_column_swap_gains_stay_exact_at_the_largest_magnitudes(cpu_library, pattern):
    """Rows from empty to full of the largest magnitude: stripe scores of
    every size, so a row block summed in 32 bits would overflow differently
    before and after some swap."""
    rng = np.random.default_rng(11)
    density = np.linspace(0, 1, 2000)[:, None]
    matrix = np.where(rng.random((2000, 32)) < density, 1.0, 0.0)  # 1.0: MAX_QUANTIZED
    assert_column_swaps_agree(cpu_library, matrix, seed=12, pattern=pattern)


def test_kernel_library_refuses_bad_patterns(cpu_library):
    """The shared argument checks: m in {2, 4, 8, 16}, 1 <= n < m, columns and
    window multiples of m."""
    magnitudes = metrics.quantize(random_matrix((4, 16)))
    create = cpu_library._lib.ss_search_create
    for n, m, window in ((0, 4, 0), (4, 4, 0), (1, 3, 0), (1, 32, 0), (2, 8, 12), (1, 16, 0)):
        cols = 16 if m != 16 else 8  # 8 columns are not a whole 16-column stripe
        handle = ctypes.c_void_p()
        status = create(
            magnitudes[:cols], 4, cols, n, m, window, None, 0, None, 0, ctypes.byref(handle)
        )
        assert status == 1, (n, m, window)  # SS_INVALID_ARGUMENT
        assert not handle.value
    handle = ctypes.c_void_p()
    assert create(magnitudes, 4, 16, 15, 16, 0, None, 0, None, 0, ctypes.byref(handle)) == 0
    cpu_library._lib.ss_search_destroy(handle)


@pytest.mark.parametrize("pattern", ["1:2", "1:4", "3:4", "2:8", "7:8", "8:16"])
def test_reference_column_swaps_is_the_change_of_the_total_score_for_every_pattern(pattern):
    """The reference's swap gains (from row thresholds) against rescoring the
    whole order after each swap, on ties too."""
    m = parse_pattern(pattern).m
    for matrix in (random_matrix((5, 2 * m), seed=40), tied_matrix((5, 3 * m), seed=41)):
        magnitudes = metrics.quantize(matrix)
        cols = matrix.shape[1]
        permutation = np.random.default_rng(42).permutation(cols)
        gains = ReferenceSearch(magnitudes, pattern=pattern).column_swaps(
            permutation, np.arange(cols)
        )
        before = metrics.quantized_score(magnitudes, permutation, pattern)
        for p, q in itertools.product(range(cols), repeat=2):
            swapped = permutation.copy()
            swapped[[p, q]] = swapped[[q, p]]
            after = metrics.quantized_score(magnitudes, swapped, pattern)
            assert gains[p, q] == (0 if p // m == q // m else after - before), (p, q)


# --- on a GPU --------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("pattern, window", PATTERN_KERNEL_CASES)
def test_cuda_kernels_match_the_reference_for_every_pattern(pattern, window):
    library = cuda_library()
    for shape, make in [
        ((37, 32), random_matrix),
        ((12, 48), tied_matrix),
        ((300, 48), tied_matrix),
    ]:
        assert_stripe_groups_agree(library, make(shape, seed=7), window, 8, pattern, 20)
    for pattern in ("1:2", "1:4", "3:4", "2:8", "4:8", "8:16", "15:16"):
        assert_column_swaps_agree(library, random_matrix((37, 32), seed=9), 10, pattern)
        assert_column_swaps_agree(library, tied_matrix((300, 48), seed=9), 10, pattern)


@pytest.mark.gpu
def test_cuda_gains_stay_exact_at_the_largest_magnitudes():
    library = cuda_library()
    for pattern, window in LARGEST_MAGNITUDE_CASES:
        assert_exact_at_the_largest_magnitudes(library, pattern, window)


@pytest.mark.gpu
def test_gpu_and_numpy_backends_return_identical_permutations_for_every_pattern():
    cuda_library()
    for pattern, strategy in PATTERN_CASES:
        matrix = pattern_agreement_matrix(pattern, seed=1)
        on_gpu = search.find_permutation(matrix, strategy, device="GPU", seed=3, pattern=pattern)
        on_numpy = search.find_permutation(
            matrix, strategy, device="numpy", seed=3, pattern=pattern
        )
        assert on_gpu.backend == "CUDA"
        np.testing.assert_array_equal(
            on_gpu.permutation, on_numpy.permutation, err_msg=f"{pattern} {strategy}"
        )


# --- strategies ------------------------------------------------------------------

PATTERN_STRATEGIES = {
    "1:2": ["optimize_stripe_groups,8,3", "channel_swap,3", "random,50"],
    "1:4": ["optimize_stripe_groups,8,3", "optimize_stripe_groups,12,0", "channel_swap,3"],
    "3:4": ["optimize_stripe_groups,8,3", "channel_swap,0"],
    "2:8": ["optimize_stripe_groups,16,0", "channel_swap,3", "random,50"],
    "4:8": ["optimize_stripe_groups,16,1", "channel_swap,3"],
    "8:16": ["channel_swap,3", "channel_swap,0", "random,50"],
    "1:16": ["channel_swap,3"],
}
PATTERN_STRATEGY_CASES = [(p, s) for p, names in PATTERN_STRATEGIES.items() for s in names]


@pytest.mark.parametrize("pattern, strategy", PATTERN_STRATEGY_CASES)
def test_strategy_returns_a_consistent_order_that_gains_for_every_pattern(pattern, strategy):
    matrix = random_matrix((12, 32), seed=20)
    result = search.find_permutation(matrix, strategy, device="CPU", pattern=pattern)
    assert_consistent(result, matrix, pattern)
    assert result.strategy == strategy
    assert result.magnitude > result.identity_magnitude, "a random matrix has room to gain"


def brute_force_best_nm(matrix, pattern):
    """The best kept magnitude over every arrangement of the columns into
    stripes, for 8 columns (all 8! orders) or 16 columns of 8-wide stripes
    (every choice of the 8 columns that share column 0's stripe)."""
    n, m = parse_pattern(pattern).n, parse_pattern(pattern).m
    magnitudes = np.abs(matrix)
    cols = matrix.shape[1]
    if cols == 8:
        orders = ALL_ORDERS_OF_8
    else:
        firsts = [(0, *rest) for rest in itertools.combinations(range(1, cols), m - 1)]
        orders = np.array([list(f) + sorted(set(range(cols)) - set(f)) for f in firsts])
    stripes = np.sort(magnitudes[:, orders].reshape(len(matrix), len(orders), -1, m), axis=-1)
    return stripes[..., m - n :].sum(axis=(0, 2, 3)).max()


@pytest.mark.parametrize("pattern, cols", [("1:2", 8), ("1:4", 8), ("3:4", 8), ("2:8", 16)])
@pytest.mark.parametrize("seed", [0, 1])
def test_exhaustive_finds_the_best_arrangement_for_every_pattern(pattern, cols, seed):
    matrix = random_matrix((6, cols), seed=seed)
    best = brute_force_best_nm(matrix, pattern)
    result = search.exhaustive(matrix, pattern=pattern)
    assert best - quantization_slack(matrix) <= result.magnitude <= best * (1 + 1e-12)
    assert_consistent(result, matrix, pattern)


def test_exhaustive_of_one_stripe_is_the_identity():
    """8:16 on 16 columns: one stripe, every order keeps the same."""
    matrix = random_matrix((6, 16), seed=2)
    result = search.exhaustive(matrix, pattern="8:16")
    np.testing.assert_array_equal(result.permutation, np.arange(16))
    assert result.efficacy == 0.0


@pytest.mark.parametrize("pattern", ["1:2", "1:4", "3:4", "4:8"])
def test_no_heuristic_beats_exhaustive_for_every_pattern(pattern):
    matrix = random_matrix((8, 16), seed=21)
    optimum = search.exhaustive(matrix, pattern=pattern).magnitude + quantization_slack(matrix)
    for strategy in [*PATTERN_STRATEGIES[pattern], "random,200"]:
        result = search.find_permutation(matrix, strategy, pattern=pattern)
        assert result.magnitude <= optimum, strategy


@pytest.mark.parametrize("pattern, other", [("1:4", "2:4"), ("3:4", "1:4"), ("1:2", "2:4")])
def test_the_search_optimises_for_the_chosen_pattern(pattern, other):
    """The optimum for one pattern, measured by another, is no better than
    the other's own optimum, and for some matrices strictly worse."""
    strictly = 0
    for seed in range(6):
        matrix = random_matrix((6, 8), seed=30 + seed)
        own = search.exhaustive(matrix, pattern=pattern).permutation
        theirs = search.exhaustive(matrix, pattern=other).permutation
        own_kept = metrics.kept_magnitude(matrix, own, pattern)
        theirs_kept = metrics.kept_magnitude(matrix, theirs, pattern)
        assert own_kept >= theirs_kept - quantization_slack(matrix)
        strictly += own_kept > theirs_kept + quantization_slack(matrix)
    assert strictly > 0


def test_2_4_results_are_the_same_with_the_pattern_named():
    matrix = reference_matrix()
    named = search.find_permutation(matrix, "optimize_stripe_groups,8,0", pattern="2:4")
    default = search.find_permutation(matrix, "optimize_stripe_groups,8,0")
    np.testing.assert_array_equal(named.permutation, default.permutation)
    assert round(named.magnitude, 3) == 2919.759 and round(named.efficacy, 2) == 35.47
    assert str(named.pattern) == "2:4" == str(default.pattern)


def test_same_seed_gives_the_same_permutation_for_a_pattern():
    matrix = random_matrix((16, 64), seed=22)
    first = search.channel_swap(matrix, 10, seed=5, pattern="4:8")
    again = search.channel_swap(matrix, 10, seed=5, pattern=(4, 8))
    np.testing.assert_array_equal(first.permutation, again.permutation)


@pytest.mark.parametrize(
    "pattern, cols, message",
    [
        ("8:16", 24, "24 columns; 8:16 sparsity needs a multiple of 16"),
        ("4:8", 20, "20 columns; 4:8 sparsity needs a multiple of 8"),
        ("1:2", 9, "9 columns; 1:2 sparsity needs a multiple of 2"),
    ],
)
@pytest.mark.parametrize("strategy", ["channel_swap,0", "random,5", "exhaustive"])
def test_columns_that_are_not_whole_groups_are_a_value_error(pattern, cols, message, strategy):
    with pytest.raises(ValueError, match=message):
        search.find_permutation(np.ones((4, cols)), strategy, pattern=pattern)


@pytest.mark.parametrize("strategy", ["optimize_stripe_groups", "optimize_stripe_groups,16,0"])
def test_stripe_groups_of_16_columns_are_refused_naming_channel_swap(strategy):
    with pytest.raises(ValueError, match=r"cannot search pattern 8:16.*Use channel_swap"):
        search.find_permutation(random_matrix((4, 64)), strategy, pattern="8:16")
    with pytest.raises(ValueError, match="Use channel_swap"):
        search.optimize_stripe_groups(random_matrix((4, 64)), pattern="1:16")


@pytest.mark.parametrize(
    "pattern, window, message",
    [
        ("4:8", 8, "window must be 16 columns for pattern 4:8; got 8"),
        ("4:8", 12, "window must be 16 columns"),
        ("1:2", 10, "window must be 8, 12 or 16 columns for pattern 1:2"),
        ("2:4", 20, "window must be 8, 12 or 16 columns for pattern 2:4"),
    ],
)
def test_windows_are_checked_for_the_pattern(pattern, window, message):
    with pytest.raises(ValueError, match=message):
        search.optimize_stripe_groups(random_matrix((4, 32)), window, 0, pattern=pattern)


def test_too_many_stripe_groups_is_a_value_error_before_any_work():
    """1:2 with 8 stripes of 2 per group on 128 columns: C(64, 8) groups."""
    with pytest.raises(ValueError, match=r"stripe groups.*smaller window or channel_swap"):
        search.optimize_stripe_groups(random_matrix((4, 128)), 16, 0, pattern="1:2")


def test_bad_pattern_is_a_value_error_from_every_entry_point():
    matrix = random_matrix((4, 16))
    for call in (
        lambda: search.find_permutation(matrix, pattern="4:4"),
        lambda: search.optimize_stripe_groups(matrix, pattern="4:4"),
        lambda: search.channel_swap(matrix, pattern="4:4"),
        lambda: search.random_permutations(matrix, pattern="4:4"),
        lambda: search.exhaustive(matrix, pattern="4:4"),
        lambda: search.default_strategy(16, "4:4"),
    ):
        with pytest.raises(ValueError, match="N must be smaller than M"):
            call()


def test_default_strategy_per_pattern():
    """Stripe groups of 8 for M = 4; channel swaps for M = 2, 8 (cheaper and as
    good, benchmarks/README.md) and 16 (no stripe groups)."""
    assert search.default_strategy(64, "2:4") == search.default_strategy(64)
    assert search.default_strategy(128, "1:4") == "optimize_stripe_groups,8,50"
    assert search.default_strategy(64, "1:2") == "channel_swap,100"
    assert search.default_strategy(128, "4:8") == "channel_swap,50"
    assert search.default_strategy(4096, "8:16") == "channel_swap,10"
    matrix = random_matrix((8, 32), seed=23)
    default = search.find_permutation(matrix, pattern="8:16", device="CPU")
    named = search.channel_swap(matrix, 100, pattern="8:16", device="CPU")
    assert default.strategy == "channel_swap,100"
    np.testing.assert_array_equal(default.permutation, named.permutation)


def test_parse_strategy_fills_in_the_pattern_window():
    assert search.parse_strategy("optimize_stripe_groups", "4:8")[1]["window"] == 16
    assert search.parse_strategy("optimize_stripe_groups", "1:2")[1]["window"] == 8
    assert search.parse_strategy("optimize_stripe_groups,12", "1:2")[1]["window"] == 12
