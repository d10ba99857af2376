"""Channel-permutation search for N:M sparsity (no TensorFlow needed).

A permutation of a matrix's columns (input channels) changes which weights an
N:M mask (default 2:4) keeps; the search finds one that keeps more magnitude.
The hot loop runs in native kernels (`kernels/`, CUDA or CPU through ctypes)
with a NumPy reference as fallback, and every backend returns the same
permutation.

```python
from tf_asp import search

m = np.random.RandomState(1).rand(128, 64)      # rows = outputs, cols = channels
result = search.find_permutation(m, strategy="optimize_stripe_groups,8,0")
result.efficacy            # 35.47: % of the possible gain (published: 35.5)
m[:, result.permutation]   # the permuted matrix
search.find_permutation(m, pattern="4:8").efficacy    # the same for 4:8
```

The command line does the same for a matrix or a saved kernel:
`python -m tf_asp.search --infile kernel.npy optimize_stripe_groups,8,100`.
"""

import numpy as np

from tf_asp.patterns import DEFAULT_PATTERN
from tf_asp.patterns import Pattern
from tf_asp.patterns import parse_pattern
from tf_asp.search.backends import DEVICES
from tf_asp.search.backends import check_device
from tf_asp.search.backends import select_backend
from tf_asp.search.metrics import efficacy
from tf_asp.search.metrics import kept_magnitude
from tf_asp.search.metrics import permutation_efficacy
from tf_asp.search.metrics import row_bound_magnitude
from tf_asp.search.metrics import rows_half_magnitude
from tf_asp.search.metrics import unstructured_magnitude
from tf_asp.search.native import KernelLibraryError
from tf_asp.search.strategies import SearchResult
from tf_asp.search.strategies import channel_swap
from tf_asp.search.strategies import check_time_limit
from tf_asp.search.strategies import exhaustive
from tf_asp.search.strategies import optimize_stripe_groups
from tf_asp.search.strategies import random_permutations
from tf_asp.search.strategies import stripe_group_window

STRATEGY_FORMS = (
    "optimize_stripe_groups,WINDOW,ESCAPES",
    "channel_swap,ESCAPES",
    "random,COUNT",
    "exhaustive",
)


def parse_strategy(text, pattern=DEFAULT_PATTERN):
    """`"optimize_stripe_groups,8,100"` -> (function, kwargs), or a ValueError.

    Missing arguments take their defaults; the window's is the pattern's
    smallest (8 columns for M = 2 or 4, 16 for M = 8).
    """
    name, *numbers = [part.strip() for part in str(text).split(",")]
    try:
        numbers = [int(n) for n in numbers]
    except ValueError:
        raise ValueError(f"Strategy {text!r}: its arguments must be integers.") from None
    forms = {
        "optimize_stripe_groups": (optimize_stripe_groups, ("window", "escape_attempts"), (8, 100)),
        "channel_swap": (channel_swap, ("escape_attempts",), (100,)),
        "channel_swaps": (channel_swap, ("escape_attempts",), (100,)),
        "random": (random_permutations, ("count",), (10,)),
        "exhaustive": (exhaustive, (), ()),
    }
    if name not in forms or len(numbers) > len(forms[name][1]):
        raise ValueError(f"Unknown strategy {text!r}; use one of: {', '.join(STRATEGY_FORMS)}.")
    function, names, defaults = forms[name]
    if function is optimize_stripe_groups and not numbers:
        numbers = [stripe_group_window(None, pattern)]
    values = numbers + list(defaults[len(numbers) :])
    return function, dict(zip(names, values))


def default_strategy(columns, pattern=DEFAULT_PATTERN):
    """The strategy used when none is named, for a matrix of `columns` columns.

    For M = 4 (2:4, 1:4, 3:4): stripe groups of 8 columns with 100 escape
    attempts at 64 columns or fewer, and fewer attempts as matrices widen (at
    least 10): an escape rescores every group that touches two stripes, so
    its cost grows with the width, while its gain shrinks (ResNet50's
    512-column 3x3 kernels, 2:4: 2.6 s and efficacy 7.7 without escapes,
    14 s and 8.2 with 100).

    For M = 2, 8 and 16: channel swaps with the same escape attempts. Their
    stripe groups cost far more for little or no gain (512 x 128, CPU: 1:2
    window 8 efficacy 12.5 in 13 s, channel_swap,50 12.2 in 0.09 s; 4:8
    window 16 26.5 in 16 s, channel_swap,50 27.2 in 0.26 s), and M = 16 has
    none.

    ```python
    default_strategy(64), default_strategy(512)   # '...,8,100', '...,8,12'
    default_strategy(64, "4:8")                   # 'channel_swap,100'
    ```
    """
    pattern = parse_pattern(pattern)
    escapes = max(10, min(100, 6400 // max(int(columns), 1)))
    if pattern.m != 4:
        return f"channel_swap,{escapes}"
    return f"optimize_stripe_groups,8,{escapes}"


def find_permutation(
    matrix, strategy=None, device="auto", time_limit=60, seed=0, pattern=DEFAULT_PATTERN
):
    """Searches a column permutation of `matrix` (rows, C) for N:M pruning.

    Args:
        matrix: rows = outputs, columns = input channels (a multiple of M).
        strategy: e.g. `"optimize_stripe_groups,8,100"`, `"channel_swap,100"`,
            `"random,1000"`, `"exhaustive"`; None: `default_strategy(C, pattern)`.
        device: `"auto"`, `"GPU"`, `"CPU"` or `"numpy"`.
        time_limit: seconds (None: none); past it the best so far is returned.
        seed: seed of the strategy's own random generator.
        pattern: `"N:M"` (default `"2:4"`), an `(n, m)` pair or a `Pattern`.

    Returns:
        A `SearchResult` (permutation, magnitude, efficacy, backend, pattern, ...).
    """
    pattern = parse_pattern(pattern)
    if strategy is None:
        strategy = default_strategy(np.shape(matrix)[-1] if np.ndim(matrix) else 0, pattern)
    function, options = parse_strategy(strategy, pattern)
    common = dict(pattern=pattern, time_limit=time_limit)
    if function is exhaustive:
        return exhaustive(matrix, device=device, **common)
    if function is random_permutations:
        return random_permutations(matrix, seed=seed, **common, **options)
    return function(matrix, device=device, seed=seed, **common, **options)


def as_search_matrix(kernel):
    """A Keras kernel as the search's (rows, C) matrix (docs/design.md: "Search matrix").

    Dense `(C, K)` -> `(K, C)`; Conv2D `(H, W, C, K)` -> `(K*H*W, C)`: the
    input channels (axis -2) become the columns.

    ```python
    as_search_matrix(np.zeros((3, 3, 64, 128))).shape    # (1152, 64)
    ```
    """
    kernel = np.asarray(kernel)
    if kernel.ndim == 2:
        return kernel.T
    if kernel.ndim == 4:
        return kernel.transpose(3, 0, 1, 2).reshape(-1, kernel.shape[2])
    raise ValueError(
        "A kernel must be 2-D (Dense, (C, K)) or 4-D (Conv2D, (H, W, C, K)); "
        f"got shape {kernel.shape}."
    )


__all__ = [
    "DEFAULT_PATTERN",
    "DEVICES",
    "KernelLibraryError",
    "Pattern",
    "SearchResult",
    "as_search_matrix",
    "channel_swap",
    "check_device",
    "check_time_limit",
    "default_strategy",
    "efficacy",
    "exhaustive",
    "find_permutation",
    "kept_magnitude",
    "optimize_stripe_groups",
    "parse_pattern",
    "parse_strategy",
    "permutation_efficacy",
    "random_permutations",
    "row_bound_magnitude",
    "rows_half_magnitude",
    "select_backend",
    "unstructured_magnitude",
]
