"""Channel-permutation search for 2:4 sparsity (no TensorFlow needed).

A permutation of a matrix's columns (input channels) changes which weights a
2:4 mask keeps; the search finds one that keeps more magnitude. The hot loop
runs in native kernels (`kernels/`, CUDA or CPU through ctypes) with a NumPy
reference as fallback, and every backend returns the same permutation.

```python
from tf_asp import search

m = np.random.RandomState(1).rand(128, 64)      # rows = outputs, cols = channels
result = search.find_permutation(m, strategy="optimize_stripe_groups,8,0")
result.efficacy            # 35.47: % of the possible gain (published: 35.5)
m[:, result.permutation]   # the permuted matrix
```

The command line does the same for a matrix or a saved kernel:
`python -m tf_asp.search --infile kernel.npy optimize_stripe_groups,8,100`.
"""

import numpy as np

from tf_asp.search.backends import DEVICES
from tf_asp.search.backends import check_device
from tf_asp.search.backends import select_backend
from tf_asp.search.metrics import efficacy
from tf_asp.search.metrics import kept_magnitude
from tf_asp.search.metrics import rows_half_magnitude
from tf_asp.search.metrics import unstructured_magnitude
from tf_asp.search.native import KernelLibraryError
from tf_asp.search.strategies import SearchResult
from tf_asp.search.strategies import channel_swap
from tf_asp.search.strategies import check_time_limit
from tf_asp.search.strategies import exhaustive
from tf_asp.search.strategies import optimize_stripe_groups
from tf_asp.search.strategies import random_permutations

STRATEGY_FORMS = (
    "optimize_stripe_groups,WINDOW,ESCAPES",
    "channel_swap,ESCAPES",
    "random,COUNT",
    "exhaustive",
)


def parse_strategy(text):
    """`"optimize_stripe_groups,8,100"` -> (function, kwargs), or a ValueError."""
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
    values = numbers + list(defaults[len(numbers) :])
    return function, dict(zip(names, values))


def default_strategy(columns):
    """The strategy used when none is named, for a matrix of `columns` columns.

    Stripe groups of 8 columns with 100 escape attempts at 64 columns or
    fewer, and fewer attempts as matrices widen (at least 10): an escape
    rescores every group that touches two stripes, so its cost grows with the
    width, while its gain shrinks (ResNet50's 512-column 3x3 kernels: 2.6 s
    and efficacy 7.7 without escapes, 14 s and 8.2 with 100).

    ```python
    default_strategy(64), default_strategy(512)   # '...,8,100', '...,8,12'
    ```
    """
    return f"optimize_stripe_groups,8,{max(10, min(100, 6400 // max(int(columns), 1)))}"


def find_permutation(matrix, strategy=None, device="auto", time_limit=60, seed=0):
    """Searches a column permutation of `matrix` (rows, C) for 2:4 pruning.

    Args:
        matrix: rows = outputs, columns = input channels (a multiple of 4).
        strategy: e.g. `"optimize_stripe_groups,8,100"`, `"channel_swap,100"`,
            `"random,1000"`, `"exhaustive"`; None: `default_strategy(C)`.
        device: `"auto"`, `"GPU"`, `"CPU"` or `"numpy"`.
        time_limit: seconds (None: none); past it the best so far is returned.
        seed: seed of the strategy's own random generator.

    Returns:
        A `SearchResult` (permutation, magnitude, efficacy, backend, ...).
    """
    if strategy is None:
        strategy = default_strategy(np.shape(matrix)[-1] if np.ndim(matrix) else 0)
    function, options = parse_strategy(strategy)
    if function is exhaustive:
        return exhaustive(matrix, device=device, time_limit=time_limit)
    if function is random_permutations:
        return random_permutations(matrix, seed=seed, time_limit=time_limit, **options)
    return function(matrix, device=device, seed=seed, time_limit=time_limit, **options)


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
    "DEVICES",
    "KernelLibraryError",
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
    "parse_strategy",
    "random_permutations",
    "rows_half_magnitude",
    "select_backend",
    "unstructured_magnitude",
]
