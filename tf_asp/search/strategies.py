"""Permutation-search strategies: each returns a column order for a matrix
that makes its N:M mask (default 2:4) keep more magnitude.

- `optimize_stripe_groups(window, escape_attempts)`: the published method
  (Pool & Yu, NeurIPS 2021). For every group of `window / M` stripes, find
  the best of all distinct arrangements of their columns; greedily apply the
  best non-overlapping improvements; rescore only groups touching changed
  stripes; repeat until nothing improves. Escape attempts then perturb the
  converged order (swap two columns of different stripes, a bounded
  regression) and search again; the best order seen is returned. Windows:
  8, 12 or 16 columns for M = 2 and 4, 16 for M = 8, none for M = 16.
- `channel_swap(escape_attempts)`: greedy best pairwise column swap until no
  swap helps (TETRIS adapted to N:M), with the same escapes. Any pattern.
- `random_permutations(n)`: the best of `n` random orders (and the identity).
- `exhaustive()`: the true optimum, for matrices of at most 16 columns.

All of them take the `pattern` ("N:M", default "2:4"), score with the exact
integer kernels (see `metrics.quantize`), take a `seed` for their own
generator, and stop at `time_limit` seconds with the best order found so far
(`SearchResult.timed_out`).

```python
result = optimize_stripe_groups(matrix, window=8, escape_attempts=100)
result.permutation, result.efficacy, result.duration, result.backend
optimize_stripe_groups(matrix, 16, 10, pattern="4:8").efficacy
```
"""

import dataclasses
import itertools
import math
import time

import numpy as np

from tf_asp.log import logger
from tf_asp.patterns import DEFAULT_PATTERN
from tf_asp.patterns import Pattern
from tf_asp.patterns import parse_pattern
from tf_asp.search import metrics
from tf_asp.search.backends import check_device
from tf_asp.search.backends import select_backend
from tf_asp.search.windows import MAX_WINDOW
from tf_asp.search.windows import WINDOWS
from tf_asp.search.windows import partition_count
from tf_asp.search.windows import window_tables

# Seconds one kernel call aims at: the time limit is checked between calls.
SECONDS_PER_CALL = 0.05
RANDOM_BATCH_ELEMENTS = 1 << 22
# Most stripe groups one search enumerates (their list alone is memory).
MAX_STRIPE_GROUPS = 1 << 25


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """A permutation and what it is worth.

    Attributes:
        permutation: int array, column `i` of the permuted matrix is column
            `permutation[i]` of the original.
        magnitude: what the N:M mask keeps with the permutation.
        identity_magnitude: ... without it.
        bound: what each row keeping its largest N/M fraction would keep.
        efficacy: % of the room between identity and bound that was gained.
        strategy, backend: what searched, and where.
        duration: seconds.
        timed_out: the time limit stopped the search early.
        pattern: the N:M pattern searched for (a `tf_asp.patterns.Pattern`).
    """

    permutation: np.ndarray
    magnitude: float
    identity_magnitude: float
    bound: float
    efficacy: float
    strategy: str
    backend: str
    duration: float
    timed_out: bool = False
    pattern: Pattern = DEFAULT_PATTERN


def check_time_limit(seconds, name="time_limit"):
    """`seconds` if it is a positive number or None, else a ValueError."""
    number = isinstance(seconds, (int, float, np.integer, np.floating)) and not isinstance(
        seconds, bool
    )
    if seconds is not None and not (number and seconds > 0):
        raise ValueError(f"{name} must be a positive number of seconds or None; got {seconds!r}.")
    return seconds


class Deadline:
    """`expired()` once `seconds` (None: never) have passed since creation."""

    def __init__(self, seconds):
        check_time_limit(seconds)
        self.end = None if seconds is None else time.perf_counter() + seconds
        self.hit = False

    def expired(self):
        self.hit = self.hit or (self.end is not None and time.perf_counter() >= self.end)
        return self.hit


class _Order:
    """The current column order, its exact score and the best order seen."""

    def __init__(self, magnitudes, permutation, pattern):
        self.magnitudes = magnitudes
        self.pattern = pattern
        self.permutation = np.array(permutation, dtype=np.int32)
        self.score = metrics.quantized_score(magnitudes, self.permutation, pattern)
        self.best, self.best_score = self.permutation.copy(), self.score

    def changed(self, gain=None):
        """Records a change worth `gain` (None: recompute the score)."""
        if gain is None:
            self.score = metrics.quantized_score(self.magnitudes, self.permutation, self.pattern)
        else:
            self.score += int(gain)
        if self.score > self.best_score:
            self.best, self.best_score = self.permutation.copy(), self.score

    def perturb(self, rng):
        """Swaps two random columns of different stripes; returns their stripes."""
        m = self.pattern.m
        stripes = rng.choice(len(self.permutation) // m, size=2, replace=False)
        a, b = m * stripes + rng.integers(0, m, size=2)
        self.permutation[[a, b]] = self.permutation[[b, a]]
        self.changed()
        return stripes


def _stripe_groups(search, order, window, escape_attempts, rng, deadline):
    m = order.pattern.m
    groups = _stripe_group_list(len(order.permutation) // m, window // m)
    subsets, partitions = search.subsets, search.partitions
    improvements = np.zeros(len(groups), np.int64)
    best = np.zeros(len(groups), np.int32)
    dirty = np.ones(len(groups), bool)
    identity = [tuple(range(m * k, m * k + m)) for k in range(window // m)]
    escapes, tabu, per_call = 0, (), 1
    while not deadline.expired():
        stale = np.flatnonzero(dirty)
        first = 0
        while first < len(stale):
            chunk = stale[first : first + per_call]
            started = time.perf_counter()
            improvements[chunk], best[chunk] = search.stripe_groups(
                order.permutation, groups[chunk]
            )
            if deadline.expired():
                return
            per_call = _calls_of(SECONDS_PER_CALL, len(chunk), time.perf_counter() - started)
            first += len(chunk)
        chosen = _disjoint_best(improvements, groups, tabu)
        if chosen:
            changed = []
            for g in chosen:
                window_columns = order.permutation[(m * groups[g][:, None] + np.arange(m)).ravel()]
                for k, subset in enumerate(subsets[partitions[best[g]]]):
                    stripe = groups[g][k]
                    if tuple(subset) != identity[k]:
                        changed.append(stripe)
                    order.permutation[m * stripe : m * stripe + m] = window_columns[subset]
            order.changed(improvements[chosen].sum())
            tabu = ()
        elif escapes < escape_attempts:
            escapes += 1
            changed = tabu = order.perturb(rng)
        else:
            return
        dirty = np.isin(groups, changed).any(axis=1)


def _stripe_group_list(stripe_count, group_size):
    """Every set of `group_size` stripes, as an int32 array (lexicographic)."""
    flat = itertools.chain.from_iterable(itertools.combinations(range(stripe_count), group_size))
    return np.fromiter(flat, dtype=np.int32).reshape(-1, group_size)


def _calls_of(seconds, count, elapsed):
    """How many items the next call should take to last about `seconds`."""
    rate = count / max(elapsed, 1e-6)
    return int(min(max(1, rate * seconds), 2 * count + 1))


def _disjoint_best(improvements, groups, tabu=()):
    """Indices of candidates with a gain, best first, skipping those that
    share a stripe with a chosen one or hold every stripe of `tabu` (the
    stripes an escape just perturbed: undoing it is not allowed at once)."""
    candidates = np.flatnonzero(improvements > 0)
    candidates = candidates[np.argsort(-improvements[candidates], kind="stable")]
    used, chosen, tabu = set(), [], set(int(t) for t in tabu)
    for g in candidates:
        stripes = groups[g].tolist()
        if used.isdisjoint(stripes) and not (tabu and tabu <= set(stripes)):
            used.update(stripes)
            chosen.append(int(g))
    return chosen


def _channel_swap(search, order, escape_attempts, rng, deadline):
    cols, m = len(order.permutation), order.pattern.m
    stripe_of = np.arange(cols) // m
    upper = np.triu(stripe_of[:, None] != stripe_of[None, :], k=1)
    gains = search.column_swaps(order.permutation, np.arange(cols))
    escapes, tabu = 0, ()
    while not deadline.expired():
        pairs = np.flatnonzero(upper & (gains > 0))
        swaps = np.stack([pairs // cols, pairs % cols], axis=1)
        chosen = _disjoint_best(gains.ravel()[pairs], stripe_of[swaps], tabu)
        if chosen:
            i, j = swaps[chosen].T
            order.permutation[np.concatenate([i, j])] = order.permutation[np.concatenate([j, i])]
            order.changed(gains[i, j].sum())
            changed, tabu = np.concatenate([stripe_of[i], stripe_of[j]]), ()
        elif escapes < escape_attempts:
            escapes += 1
            changed = tabu = order.perturb(rng)
        else:
            return
        positions = (m * np.asarray(changed)[:, None] + np.arange(m)).ravel()
        fresh = search.column_swaps(order.permutation, positions)
        gains[positions, :] = fresh
        gains[:, positions] = fresh.T


def _random(magnitudes, order, count, rng, deadline):
    cols, rows = magnitudes.shape
    m = order.pattern.m
    batch = max(1, RANDOM_BATCH_ELEMENTS // (cols * rows))
    tried = 0
    while tried < count and not deadline.expired():
        size = min(batch, count - tried)
        permutations = np.argsort(rng.random((size, cols)), axis=1).astype(np.int32)
        stripes = np.moveaxis(magnitudes[permutations].reshape(size, cols // m, m, rows), 2, -1)
        scores = metrics.stripe_kept(stripes, order.pattern).sum(axis=(1, 2), dtype=np.int64)
        k = int(np.argmax(scores))
        if scores[k] > order.best_score:
            order.best, order.best_score = permutations[k], int(scores[k])
        tried += size


def _exhaustive(search, order):
    improvements, best = search.stripe_groups(
        order.permutation, np.arange(search.window // order.pattern.m, dtype=np.int32)[None]
    )
    arranged = search.subsets[search.partitions[best[0]]].ravel()
    order.permutation = order.permutation[arranged]
    order.changed(improvements[0])


def _run(name, matrix, pattern, device, seed, time_limit, permutation, body, window=0):
    """Validates, picks the backend, runs `body(search, order, rng, deadline)`."""
    start = time.perf_counter()
    matrix = metrics.check_matrix(matrix, pattern=pattern)
    cols = matrix.shape[1]
    if permutation is None:
        permutation = np.arange(cols)
    permutation = np.asarray(permutation)
    if permutation.shape != (cols,) or not np.array_equal(np.sort(permutation), np.arange(cols)):
        raise ValueError(f"permutation must be a permutation of range({cols}).")
    deadline = Deadline(time_limit)
    rng = np.random.default_rng(seed)
    magnitudes = metrics.quantize(matrix)
    order = _Order(magnitudes, permutation, pattern)
    backend = select_backend(device)
    tables = window_tables(window, pattern.m) if window else None
    if cols >= 2 * pattern.m:  # one stripe has nothing to arrange
        with backend.search(magnitudes, window, tables, pattern) as search:
            body(search, order, rng, deadline)
    identity = metrics.kept_magnitude(matrix, np.arange(cols), pattern)  # summed as `kept` is
    bound = metrics.row_bound_magnitude(matrix, pattern)
    kept = metrics.kept_magnitude(matrix, order.best, pattern)
    result = SearchResult(
        permutation=np.asarray(order.best, dtype=np.int64),
        magnitude=kept,
        identity_magnitude=identity,
        bound=bound,
        efficacy=metrics.efficacy(kept, identity, bound),
        strategy=name,
        backend=backend.backend,
        duration=time.perf_counter() - start,
        timed_out=deadline.hit,
        pattern=pattern,
    )
    logger.debug(
        "Search %s for %s on %s (%d x %d): efficacy %.1f%% in %.3f s%s",
        name,
        pattern,
        result.backend,
        *matrix.shape,
        result.efficacy,
        result.duration,
        " (time limit)" if result.timed_out else "",
    )
    return result


def stripe_group_window(window, pattern=DEFAULT_PATTERN):
    """`window` checked for `pattern` (None: the pattern's smallest window).

    ```python
    stripe_group_window(None), stripe_group_window(None, "4:8")    # 8, 16
    stripe_group_window(8, "8:16")     # ValueError naming channel_swap
    ```
    """
    pattern = parse_pattern(pattern)
    allowed = WINDOWS[pattern.m]
    if not allowed:
        raise ValueError(
            f"optimize_stripe_groups cannot search pattern {pattern}: a stripe group of "
            f"{pattern.m}-column stripes needs a window of {2 * pattern.m} columns, and its "
            f"{partition_count(2 * pattern.m, pattern.m):.1e} arrangements are too many to "
            f"score. Use channel_swap (e.g. 'channel_swap,100'), the default for M = {pattern.m}."
        )
    if window is None:
        return allowed[0]
    if (
        isinstance(window, bool)
        or not isinstance(window, (int, np.integer))
        or window not in allowed
    ):
        listed = " or ".join(", ".join(map(str, allowed)).rsplit(", ", 1))
        raise ValueError(f"window must be {listed} columns for pattern {pattern}; got {window!r}.")
    return int(window)


def optimize_stripe_groups(
    matrix,
    window=None,
    escape_attempts=100,
    *,
    pattern=DEFAULT_PATTERN,
    device="auto",
    seed=0,
    time_limit=None,
    permutation=None,
):
    """The published stripe-group search; see the module docstring.

    Args:
        matrix: (rows, C) array, C a multiple of M (outputs x input channels).
        window: columns per stripe group: 8, 12 or 16 for M = 2 or 4 (default
            8), 16 for M = 8; capped at C. M = 16 has none: use channel_swap.
        escape_attempts: perturbations tried after convergence.
        pattern: "N:M" (default "2:4"), an (n, m) pair or a Pattern.
        device: `"auto"`, `"GPU"`, `"CPU"` or `"numpy"`.
        seed: seed of the escape attempts' generator.
        time_limit: seconds (None: no limit); the best order so far after it.
        permutation: the starting order (default: identity).
    """
    pattern = parse_pattern(pattern)
    window = stripe_group_window(window, pattern)
    escape_attempts = _check_count("escape_attempts", escape_attempts)
    cols = np.shape(matrix)[1] if np.ndim(matrix) == 2 else 0
    searched = min(window, cols - cols % pattern.m)  # a narrower matrix is one group
    if searched >= 2 * pattern.m:
        groups = math.comb(cols // pattern.m, searched // pattern.m)
        if groups > MAX_STRIPE_GROUPS:
            raise ValueError(
                f"A window of {window} columns on {cols} columns makes {groups:.2e} stripe groups "
                f"of {pattern} stripes, more than the {MAX_STRIPE_GROUPS:.2e} a search can list; "
                "use a smaller window or channel_swap."
            )

    def body(search, order, rng, deadline):
        _stripe_groups(search, order, search.window, escape_attempts, rng, deadline)

    return _run(
        f"optimize_stripe_groups,{window},{escape_attempts}",
        matrix,
        pattern,
        device,
        seed,
        time_limit,
        permutation,
        body,
        window=searched if searched >= 2 * pattern.m else 0,
    )


def channel_swap(
    matrix,
    escape_attempts=100,
    *,
    pattern=DEFAULT_PATTERN,
    device="auto",
    seed=0,
    time_limit=None,
    permutation=None,
):
    """Greedy best pairwise column swaps; arguments as `optimize_stripe_groups`."""
    pattern = parse_pattern(pattern)
    escape_attempts = _check_count("escape_attempts", escape_attempts)

    def body(search, order, rng, deadline):
        _channel_swap(search, order, escape_attempts, rng, deadline)

    return _run(
        f"channel_swap,{escape_attempts}",
        matrix,
        pattern,
        device,
        seed,
        time_limit,
        permutation,
        body,
    )


def random_permutations(
    matrix, count=1000, *, pattern=DEFAULT_PATTERN, seed=0, time_limit=None, device="numpy"
):
    """The best of `count` random column orders (NumPy on every device)."""
    pattern = parse_pattern(pattern)
    count = _check_count("count", count)
    check_device(device)

    def body(search, order, rng, deadline):
        _random(order.magnitudes, order, count, rng, deadline)

    return _run(f"random,{count}", matrix, pattern, "numpy", seed, time_limit, None, body)


def exhaustive(matrix, *, pattern=DEFAULT_PATTERN, device="auto", time_limit=None):
    """The optimal column order of a matrix with at most 16 columns.

    One kernel call scores every arrangement (2627625 for 2:4 at 16 columns,
    well under a second natively); `time_limit` does not interrupt it.
    """
    pattern = parse_pattern(pattern)
    cols = metrics.check_matrix(matrix, pattern=pattern).shape[1]
    if cols > MAX_WINDOW:
        raise ValueError(
            f"exhaustive search tries every arrangement and is limited to {MAX_WINDOW} columns "
            f"({partition_count(MAX_WINDOW)} arrangements for 2:4); the matrix has {cols}. "
            "Use optimize_stripe_groups."
        )

    def body(search, order, rng, deadline):
        _exhaustive(search, order)

    window = cols if cols >= 2 * pattern.m else 0
    return _run("exhaustive", matrix, pattern, device, 0, time_limit, None, body, window=window)


def _check_count(name, value, minimum=0):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)
