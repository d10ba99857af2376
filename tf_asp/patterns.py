"""N:M sparsity patterns: keep N of every M consecutive input channels.

Pure Python (no NumPy, no TensorFlow), shared by the permutation search and
the masks.

```python
pattern = parse_pattern("4:8")
pattern.n, pattern.m, str(pattern)        # 4, 8, '4:8'
parse_pattern((2, 4)) == TWO_FOUR          # True
TWO_FOUR.kept(3), TWO_FOUR.kept(10)        # 2, 5
HARDWARE_PATTERNS["1:2"]                   # 'TF32 sparse Tensor Cores ...'
```

M is 4, 8 or 16; the one exception is 1:2, which sparse Tensor Cores run for
TF32. A last partial group of `k < M` channels keeps `ceil(k * N / M)` of
them, as if padded with zeros that always lose (2:4: 1 of 1, 1 of 2, 2 of 3).
"""

import dataclasses
import operator
import re
import types

# Group sizes of the general patterns (research); 1:2 is the exception.
GROUP_SIZES = (4, 8, 16)

# The patterns NVIDIA sparse Tensor Cores (Ampere and later) run, and for what.
HARDWARE_PATTERNS = types.MappingProxyType(
    {
        "2:4": "FP16/BF16/INT8 sparse Tensor Cores (Ampere and later)",
        "1:2": "TF32 sparse Tensor Cores (Ampere and later)",
    }
)

_TEXT = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Keep `n` of every `m` consecutive input channels (validated).

    ```python
    Pattern(2, 4)            # 2:4
    Pattern(4, 8).density    # 0.5
    Pattern(3, 4)            # 3:4 (research)
    Pattern(4, 4)            # ValueError: N must be smaller than M
    ```
    """

    n: int
    m: int

    def __post_init__(self):
        for name, field in (("N", "n"), ("M", "m")):
            value = getattr(self, field)
            try:
                if isinstance(value, bool):
                    raise TypeError
                object.__setattr__(self, field, operator.index(value))  # NumPy integers too
            except TypeError:
                raise ValueError(f"A pattern's {name} must be an integer; got {value!r}.") from None
        if self.n < 1:
            raise ValueError(f"Pattern {self}: N must be at least 1 (keep something).")
        if self.n >= self.m:
            raise ValueError(f"Pattern {self}: N must be smaller than M (N >= M prunes nothing).")
        if self.m not in GROUP_SIZES and str(self) not in HARDWARE_PATTERNS:
            raise ValueError(
                f"Pattern {self}: M must be 4, 8 or 16 (or the pattern 1:2, which TF32 "
                "sparse Tensor Cores run)."
            )

    def __str__(self):
        return f"{self.n}:{self.m}"

    @property
    def density(self):
        """The fraction of weights kept, N / M."""
        return self.n / self.m

    @property
    def hardware(self):
        """What runs this pattern fast, or None for a research pattern."""
        return HARDWARE_PATTERNS.get(str(self))

    def kept(self, channels):
        """How many of `channels` consecutive input channels the mask keeps.

        N of every full group of M, and `ceil(k * N / M)` of a last partial
        group of `k` channels: `ceil(channels * N / M)` in all.

        ```python
        Pattern(2, 4).kept(4), Pattern(2, 4).kept(3), Pattern(1, 4).kept(6)   # 2, 2, 2
        ```
        """
        return -(-channels * self.n // self.m)


TWO_FOUR = Pattern(2, 4)
ONE_TWO = Pattern(1, 2)
DEFAULT_PATTERN = TWO_FOUR


def parse_pattern(pattern):
    """A `Pattern` from `"N:M"`, a `Pattern` or an `(n, m)` pair, or a ValueError.

    ```python
    parse_pattern("2:4"), parse_pattern(Pattern(1, 2)), parse_pattern((4, 8))
    parse_pattern("2/4")     # ValueError: ... is not N:M ...
    ```
    """
    if isinstance(pattern, Pattern):
        return pattern
    if isinstance(pattern, str):
        match = _TEXT.fullmatch(pattern)
        if match is None:
            raise ValueError(
                f"Pattern {pattern!r} is not N:M (e.g. '2:4': keep 2 of every 4 channels)."
            )
        return Pattern(int(match.group(1)), int(match.group(2)))
    if isinstance(pattern, tuple) and len(pattern) == 2:
        return Pattern(*pattern)
    raise ValueError(
        f"A pattern is a string 'N:M', an (n, m) pair or a Pattern; got {pattern!r}, "
        "which is not N:M."
    )
