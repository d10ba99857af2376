"""The permutation-search strategies: what they promise about the order they
return, how good it is, the exhaustive optimum, determinism, time limits and
the errors bad arguments give."""

import itertools
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tf_asp import search
from tf_asp.patterns import parse_pattern
from tf_asp.search import metrics
from tf_asp.search import strategies

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_matrix():
    """The published tool's default random matrix: 128 outputs x 64 channels."""
    return np.random.RandomState(1).rand(128, 64)


def random_matrix(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


STRATEGIES = {
    "stripe_groups_8_0": lambda m, **kw: search.optimize_stripe_groups(m, 8, 0, **kw),
    "stripe_groups_8_10": lambda m, **kw: search.optimize_stripe_groups(m, 8, 10, **kw),
    "stripe_groups_12_0": lambda m, **kw: search.optimize_stripe_groups(m, 12, 0, **kw),
    "stripe_groups_12_10": lambda m, **kw: search.optimize_stripe_groups(m, 12, 10, **kw),
    "channel_swap_0": lambda m, **kw: search.channel_swap(m, 0, **kw),
    "channel_swap_10": lambda m, **kw: search.channel_swap(m, 10, **kw),
    "random_200": lambda m, **kw: search.random_permutations(m, 200, **kw),
}
SHAPES = [(24, 32), (9, 16), (40, 12)]


def quantization_slack(matrix):
    """How far the kernels' integer scores may misjudge a float comparison:
    each of the size/2 kept magnitudes is off by half a step, in two scores."""
    return matrix.size / 2 * np.abs(matrix).max() / metrics.MAX_QUANTIZED


def assert_valid_permutation(permutation, cols):
    permutation = np.asarray(permutation)
    assert permutation.shape == (cols,)
    assert np.issubdtype(permutation.dtype, np.integer)
    np.testing.assert_array_equal(np.sort(permutation), np.arange(cols))


def assert_not_worse_than_identity(result, matrix, pattern="2:4"):
    # A relative 1e-12: when the identity itself comes back, the two sums may
    # differ in their last bits (see test_returning_the_identity_reports_...).
    identity = metrics.kept_magnitude(matrix, None, pattern)
    assert result.magnitude >= identity * (1 - 1e-12)


def assert_consistent(result, matrix, pattern="2:4"):
    """Every number of a SearchResult is what the metrics say of its order."""
    assert_valid_permutation(result.permutation, matrix.shape[1])
    assert result.pattern == parse_pattern(pattern)
    assert result.magnitude == metrics.kept_magnitude(matrix, result.permutation, pattern)
    identity = np.arange(matrix.shape[1])  # summed as the result's order is
    assert result.identity_magnitude == metrics.kept_magnitude(matrix, identity, pattern)
    assert result.bound == metrics.row_bound_magnitude(matrix, pattern)
    assert result.efficacy == metrics.efficacy(
        result.magnitude, result.identity_magnitude, result.bound
    )
    assert result.magnitude <= result.bound * (1 + 1e-12)
    assert result.duration >= 0


# --- what every strategy promises ------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_returns_a_valid_order_not_worse_than_identity(name, shape):
    matrix = random_matrix(shape, seed=shape[1])
    result = STRATEGIES[name](matrix)
    assert_consistent(result, matrix)
    assert_not_worse_than_identity(result, matrix)
    assert not result.timed_out


@pytest.mark.parametrize("shape", [(9, 16), (40, 12), (5, 8)])
def test_exhaustive_returns_a_valid_order_not_worse_than_identity(shape):
    matrix = random_matrix(shape, seed=shape[0])
    result = search.exhaustive(matrix)
    assert_consistent(result, matrix)
    assert_not_worse_than_identity(result, matrix)
    assert result.strategy == "exhaustive"


def test_returning_the_identity_reports_the_identity_magnitude_exactly():
    matrix = np.random.default_rng(0).random((16, 64))
    result = search.random_permutations(matrix, 0)
    np.testing.assert_array_equal(result.permutation, np.arange(64))
    assert result.magnitude == result.identity_magnitude
    assert result.efficacy == 0.0


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_improves_a_matrix_with_room(name):
    """A random (24, 32) matrix is far from its bound: every strategy gains."""
    matrix = random_matrix((24, 32), seed=1)
    result = STRATEGIES[name](matrix)
    assert result.magnitude > result.identity_magnitude
    assert 0 < result.efficacy <= 100


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_single_stripe_is_returned_as_it_is(name):
    matrix = random_matrix((6, 4), seed=2)
    result = STRATEGIES[name](matrix)
    np.testing.assert_array_equal(result.permutation, np.arange(4))
    assert result.magnitude == metrics.kept_magnitude(matrix)
    assert result.efficacy == 0.0


@pytest.mark.parametrize("name", ["stripe_groups_8_0", "stripe_groups_12_10", "channel_swap_10"])
def test_search_starts_from_the_given_permutation_and_keeps_its_gain(name):
    matrix = random_matrix((16, 32), seed=3)
    start = search.optimize_stripe_groups(matrix, 8, 0, device="numpy").permutation
    result = STRATEGIES[name](matrix, permutation=start)
    assert_consistent(result, matrix)
    assert result.magnitude >= metrics.kept_magnitude(matrix, start) * (1 - 1e-12)


def test_result_names_its_strategy_and_backend():
    matrix = random_matrix((8, 16), seed=4)
    stripe_groups = search.optimize_stripe_groups(matrix, 8, 3, device="numpy")
    assert stripe_groups.strategy == "optimize_stripe_groups,8,3"
    assert stripe_groups.backend == "numpy"
    assert search.channel_swap(matrix, 7, device="CPU").strategy == "channel_swap,7"
    assert search.channel_swap(matrix, 7, device="CPU").backend == "CPU"
    assert search.random_permutations(matrix, 5).strategy == "random,5"


def test_window_is_capped_at_the_column_count():
    """A 12-column window on 8 columns searches the whole matrix as one group
    (the result still names the strategy as asked)."""
    matrix = random_matrix((10, 8), seed=5)
    capped = search.optimize_stripe_groups(matrix, 12, 0)
    assert capped.strategy == "optimize_stripe_groups,12,0"
    np.testing.assert_array_equal(capped.permutation, search.exhaustive(matrix).permutation)


def test_find_permutation_runs_the_named_strategy():
    matrix = random_matrix((16, 24), seed=6)
    kw = dict(device="CPU", seed=2)
    cases = [
        ("optimize_stripe_groups,8,5", search.optimize_stripe_groups(matrix, 8, 5, **kw)),
        ("optimize_stripe_groups,12", search.optimize_stripe_groups(matrix, 12, 100, **kw)),
        ("channel_swap,5", search.channel_swap(matrix, 5, **kw)),
        ("channel_swaps,5", search.channel_swap(matrix, 5, **kw)),
        ("random,50", search.random_permutations(matrix, 50, seed=2)),
        (" random , 50 ", search.random_permutations(matrix, 50, seed=2)),
    ]
    for text, expected in cases:
        result = search.find_permutation(matrix, text, **kw)
        assert result.strategy == expected.strategy
        np.testing.assert_array_equal(result.permutation, expected.permutation, err_msg=text)
    small = matrix[:, :12]
    np.testing.assert_array_equal(
        search.find_permutation(small, "exhaustive").permutation,
        search.exhaustive(small).permutation,
    )


def test_parse_strategy_fills_in_the_default_arguments():
    assert search.parse_strategy("optimize_stripe_groups") == (
        search.optimize_stripe_groups,
        {"window": 8, "escape_attempts": 100},
    )
    assert search.parse_strategy("optimize_stripe_groups,12") == (
        search.optimize_stripe_groups,
        {"window": 12, "escape_attempts": 100},
    )
    assert search.parse_strategy("channel_swap,3") == (search.channel_swap, {"escape_attempts": 3})
    assert search.parse_strategy("random") == (search.random_permutations, {"count": 10})
    assert search.parse_strategy("exhaustive") == (search.exhaustive, {})


# --- quality on the reference matrix ----------------------------------------


def test_stripe_groups_8_reproduces_the_published_result():
    result = search.optimize_stripe_groups(reference_matrix(), 8, 0)
    assert round(result.magnitude, 3) == 2919.759
    assert result.efficacy >= 35.4


def test_stripe_groups_12_beats_window_8_on_the_reference_matrix():
    result = search.optimize_stripe_groups(reference_matrix(), 12, 0)
    assert result.efficacy >= 36.6


def test_channel_swap_reaches_its_published_efficacy():
    assert search.channel_swap(reference_matrix(), 0).efficacy >= 32.05


def test_escape_attempts_improve_on_the_converged_order():
    matrix = reference_matrix()
    converged = search.optimize_stripe_groups(matrix, 8, 0)
    escaped = search.optimize_stripe_groups(matrix, 8, 10)
    assert escaped.magnitude > converged.magnitude


# --- the exhaustive optimum -------------------------------------------------

ALL_ORDERS_OF_8 = np.array(list(itertools.permutations(range(8))))


def brute_force_best(matrix):
    """The best kept magnitude over all 8! column orders, by sorting."""
    columns = np.abs(matrix)[:, ALL_ORDERS_OF_8]  # (rows, 40320, 8)
    stripes = np.sort(columns.reshape(len(matrix), len(ALL_ORDERS_OF_8), 2, 4), axis=-1)
    return stripes[..., 2:].sum(axis=(0, 2, 3)).max()


@pytest.mark.parametrize("rows", [4, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exhaustive_finds_the_best_of_all_column_orders(rows, seed):
    matrix = random_matrix((rows, 8), seed=seed)
    best = brute_force_best(matrix)
    result = search.exhaustive(matrix)
    assert best - quantization_slack(matrix) <= result.magnitude <= best * (1 + 1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_no_heuristic_beats_exhaustive_on_16_columns(seed):
    matrix = random_matrix((12, 16), seed=10 + seed)
    optimum = search.exhaustive(matrix).magnitude + quantization_slack(matrix)
    for result in (
        search.optimize_stripe_groups(matrix, 8, 0),
        search.optimize_stripe_groups(matrix, 8, 20),
        search.optimize_stripe_groups(matrix, 12, 5),
        search.channel_swap(matrix, 10),
        search.random_permutations(matrix, 500),
    ):
        assert result.magnitude <= optimum, result.strategy


def test_exhaustive_refuses_more_than_16_columns():
    with pytest.raises(ValueError, match="limited to 16 columns.*has 20.*optimize_stripe_groups"):
        search.exhaustive(random_matrix((4, 20)))


# --- determinism --------------------------------------------------------------

DETERMINISM_SCRIPT = """
import numpy as np
from tf_asp.search import channel_swap, optimize_stripe_groups
m = np.random.RandomState(7).rand(64, 48)
print(optimize_stripe_groups(m, 8, 20, seed=3).permutation.tolist())
print(channel_swap(m, 20, seed=3).permutation.tolist())
"""


def test_same_seed_gives_the_same_permutation_in_fresh_processes():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", DETERMINISM_SCRIPT],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        outputs.append(stdout)
    lines = outputs[0].splitlines()
    assert len(lines) == 2
    for line in lines:
        assert sorted(eval(line)) == list(range(48))
    assert outputs[0] == outputs[1]


def test_escape_attempts_follow_the_seed():
    """In one process, a seed replays exactly (the escapes are what it drives)."""
    matrix = np.random.RandomState(7).rand(64, 48)
    first = search.optimize_stripe_groups(matrix, 8, 20, seed=3, device="numpy")
    again = search.optimize_stripe_groups(matrix, 8, 20, seed=3, device="numpy")
    converged = search.optimize_stripe_groups(matrix, 8, 0, device="numpy")
    np.testing.assert_array_equal(first.permutation, again.permutation)
    assert first.magnitude > converged.magnitude, "the escapes did not change anything"


# --- time limits ----------------------------------------------------------------


def test_time_limit_stops_a_long_search_with_a_valid_order():
    matrix = np.random.default_rng(0).random((512, 1024))
    start = time.perf_counter()
    result = search.optimize_stripe_groups(matrix, 12, 0, device="numpy", time_limit=0.5)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0
    assert result.timed_out
    assert_valid_permutation(result.permutation, 1024)
    assert_not_worse_than_identity(result, matrix)


def test_time_limit_returns_the_best_order_found_so_far():
    """Endless escapes on the native kernels: stopped by the limit, with the gain kept."""
    matrix = random_matrix((32, 128), seed=7)
    start = time.perf_counter()
    result = search.optimize_stripe_groups(matrix, 8, 10**9, device="CPU", time_limit=0.5)
    elapsed = time.perf_counter() - start
    assert result.timed_out
    assert elapsed < 2.5
    assert_consistent(result, matrix)
    converged = search.optimize_stripe_groups(matrix, 8, 0, device="CPU")
    assert result.magnitude >= converged.magnitude


def test_time_limit_bounds_the_first_kernel_call_too():
    matrix = np.random.default_rng(0).random((64, 1024))
    start = time.perf_counter()
    result = search.optimize_stripe_groups(matrix, 8, 0, device="numpy", time_limit=0.1)
    assert result.timed_out
    assert time.perf_counter() - start < 0.6


def test_without_a_time_limit_a_search_runs_to_convergence():
    result = search.optimize_stripe_groups(random_matrix((8, 32)), 8, 2, time_limit=None)
    assert not result.timed_out


def test_deadline_expires_after_its_seconds_and_stays_expired():
    deadline = strategies.Deadline(0.05)
    assert not deadline.expired()
    time.sleep(0.06)
    assert deadline.expired() and deadline.hit
    assert deadline.expired()
    assert not strategies.Deadline(None).expired()


@pytest.mark.parametrize("seconds", [0, -1, -0.5])
def test_deadline_rejects_a_non_positive_time_limit(seconds):
    with pytest.raises(ValueError, match="time_limit must be a positive number"):
        strategies.Deadline(seconds)
    with pytest.raises(ValueError, match="time_limit must be a positive number"):
        search.optimize_stripe_groups(random_matrix((4, 8)), time_limit=seconds)


# --- bad input ----------------------------------------------------------------

BAD_MATRICES = [
    (np.ones((4, 10)), "10 columns; 2:4 sparsity needs a multiple of 4"),
    (np.ones((4, 6)), "6 columns"),
    (np.array([[np.nan, 1, 2, 3]]), "NaN or Inf"),
    (np.array([[1, np.inf, 2, 3]]), "NaN or Inf"),
    (np.array([[1, 2, -np.inf, 3]]), "NaN or Inf"),
    (np.ones(8), "must be 2-D"),
    (np.ones((2, 2, 8)), "must be 2-D"),
    (np.ones((0, 8)), "is empty"),
    (np.ones((4, 0)), "is empty"),
    (np.array([["a", "b", "c", "d"]]), "must hold real numbers"),
    ([["1", "2", "3", "4"]], "must hold real numbers"),
    (np.array([[1, None, 2, 3]], dtype=object), "must hold real numbers"),
]


@pytest.mark.parametrize("matrix, message", BAD_MATRICES, ids=[m for _, m in BAD_MATRICES])
@pytest.mark.parametrize(
    "strategy", ["optimize_stripe_groups,8,0", "channel_swap,0", "random,5", "exhaustive"]
)
def test_bad_matrix_is_a_value_error_saying_why(matrix, message, strategy):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        search.find_permutation(matrix, strategy)


def test_integer_matrix_is_accepted():
    matrix = np.random.default_rng(8).integers(-9, 10, (8, 16))
    result = search.optimize_stripe_groups(matrix, 8, 0)
    assert_consistent(result, matrix)


@pytest.mark.parametrize("window", [0, 2, 10, 20, 32, -8, 8.0, "8"])
def test_bad_window_is_a_value_error(window):
    with pytest.raises(ValueError, match="window must be"):
        search.optimize_stripe_groups(random_matrix((4, 32)), window, 0)


@pytest.mark.parametrize("escapes", [-1, 1.5, True, "3", None])
def test_bad_escape_attempts_is_a_value_error(escapes):
    matrix = random_matrix((4, 16))
    with pytest.raises(ValueError, match="escape_attempts must be an integer >= 0"):
        search.optimize_stripe_groups(matrix, 8, escapes)
    with pytest.raises(ValueError, match="escape_attempts must be an integer >= 0"):
        search.channel_swap(matrix, escapes)


@pytest.mark.parametrize("count", [-1, 2.5, False])
def test_bad_random_count_is_a_value_error(count):
    with pytest.raises(ValueError, match="count must be an integer >= 0"):
        search.random_permutations(random_matrix((4, 16)), count)


@pytest.mark.parametrize(
    "permutation",
    [
        np.arange(7),
        np.arange(9),
        [0, 1, 2, 3, 4, 5, 6, 6],
        [1, 2, 3, 4, 5, 6, 7, 8],
        np.arange(8)[None],
        [-1, 1, 2, 3, 4, 5, 6, 7],
    ],
    ids=["short", "long", "duplicate", "out of range", "2-D", "negative"],
)
@pytest.mark.parametrize("strategy", [search.optimize_stripe_groups, search.channel_swap])
def test_bad_starting_permutation_is_a_value_error(strategy, permutation):
    with pytest.raises(ValueError, match=r"permutation must be a permutation of range\(8\)"):
        strategy(random_matrix((4, 8)), permutation=permutation)


@pytest.mark.parametrize(
    "text, message",
    [
        ("annealing,3", "Unknown strategy"),
        ("", "Unknown strategy"),
        ("optimize_stripe_groups,8,1,2", "Unknown strategy"),
        ("exhaustive,1", "Unknown strategy"),
        ("channel_swap,many", "arguments must be integers"),
        ("optimize_stripe_groups,8.5", "arguments must be integers"),
    ],
)
def test_bad_strategy_string_is_a_value_error_listing_the_forms(text, message):
    with pytest.raises(ValueError, match=message):
        search.parse_strategy(text)
    with pytest.raises(ValueError, match=message):
        search.find_permutation(random_matrix((4, 8)), text)


def test_unknown_strategy_error_lists_the_valid_forms():
    with pytest.raises(ValueError) as error:
        search.parse_strategy("annealing")
    for form in search.STRATEGY_FORMS:
        assert form in str(error.value)


def test_bad_strategy_argument_values_are_value_errors():
    with pytest.raises(ValueError, match="window must be"):
        search.find_permutation(random_matrix((4, 16)), "optimize_stripe_groups,10,0")
    with pytest.raises(ValueError, match="escape_attempts must be"):
        search.find_permutation(random_matrix((4, 16)), "channel_swap,-2")


def test_default_strategy_spends_fewer_escapes_on_wider_matrices():
    """100 escape attempts up to 64 columns, fewer as each one costs more, at least 10."""
    escapes = [int(search.default_strategy(c).split(",")[2]) for c in (16, 64, 128, 512, 4096)]
    assert escapes == [100, 100, 50, 12, 10]
    matrix = random_matrix((24, 128), seed=11)
    default = search.find_permutation(matrix, device="CPU")
    named = search.optimize_stripe_groups(matrix, 8, 50, device="CPU")
    assert default.strategy == "optimize_stripe_groups,8,50"
    np.testing.assert_array_equal(default.permutation, named.permutation)
