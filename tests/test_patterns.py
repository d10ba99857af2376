"""N:M patterns: what parses, what is refused and why, and how many channels
a mask keeps (including a last partial group)."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tf_asp import patterns
from tf_asp.patterns import Pattern
from tf_asp.patterns import parse_pattern

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _seeded():
    """Overrides conftest's Keras reset: patterns need no Keras."""
    yield


@pytest.mark.parametrize(
    "text, n, m",
    [("2:4", 2, 4), ("1:2", 1, 2), ("1:4", 1, 4), ("3:4", 3, 4), ("4:8", 4, 8), ("8:16", 8, 16)],
)
def test_parse_pattern_reads_n_and_m(text, n, m):
    pattern = parse_pattern(text)
    assert (pattern.n, pattern.m) == (n, m)
    assert str(pattern) == text
    assert parse_pattern((n, m)) == pattern == Pattern(n, m)
    assert parse_pattern(pattern) is pattern


def test_parse_pattern_accepts_spaces_and_numpy_integers():
    assert parse_pattern(" 4 : 8 ") == Pattern(4, 8)
    pattern = parse_pattern((np.int64(2), np.int32(4)))
    assert pattern == patterns.TWO_FOUR and type(pattern.n) is int


def test_patterns_are_frozen_and_hashable():
    pattern = Pattern(2, 4)
    with pytest.raises(AttributeError):
        pattern.n = 1
    assert {Pattern(2, 4): "x"}[parse_pattern("2:4")] == "x"


def test_hardware_patterns_are_2_4_and_1_2():
    assert patterns.DEFAULT_PATTERN == patterns.TWO_FOUR == Pattern(2, 4)
    assert patterns.ONE_TWO == Pattern(1, 2)
    assert set(patterns.HARDWARE_PATTERNS) == {"2:4", "1:2"}
    assert "TF32" in Pattern(1, 2).hardware and "FP16" in Pattern(2, 4).hardware
    assert Pattern(4, 8).hardware is None
    with pytest.raises(TypeError):
        patterns.HARDWARE_PATTERNS["4:8"] = "no"  # a constant, not state


@pytest.mark.parametrize(
    "bad, message",
    [
        ("2/4", "is not N:M"),
        ("two:four", "is not N:M"),
        ("2:4:8", "is not N:M"),
        ("", "is not N:M"),
        ("-1:4", "is not N:M"),
        (24, "is not N:M"),
        ((2, 4, 8), "is not N:M"),
        (None, "is not N:M"),
        ("4:4", "N must be smaller than M"),
        ("5:4", "N must be smaller than M"),
        ("2:2", "N must be smaller than M"),
        ("0:4", "N must be at least 1"),
        ("0:2", "N must be at least 1"),
        ("1:3", "M must be 4, 8 or 16"),
        ("3:6", "M must be 4, 8 or 16"),
        ("2:32", "M must be 4, 8 or 16"),
        ((2.0, 4), "must be an integer"),
        ((True, 4), "must be an integer"),
    ],
)
def test_bad_patterns_are_value_errors_saying_why(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_pattern(bad)


def test_1_2_is_the_only_pattern_with_m_2():
    assert parse_pattern("1:2").m == 2
    with pytest.raises(ValueError, match="or the pattern 1:2"):
        Pattern(1, 6)


@pytest.mark.parametrize("text", ["1:2", "2:4", "1:4", "3:4", "2:8", "4:8", "8:16", "15:16"])
def test_kept_is_n_per_group_and_ceil_of_a_partial_group(text):
    pattern = parse_pattern(text)
    n, m = pattern.n, pattern.m
    for channels in range(0, 3 * m + 1):
        full, partial = divmod(channels, m)
        assert pattern.kept(channels) == full * n + math.ceil(partial * n / m), channels
    assert pattern.density == n / m


def test_kept_of_2_4_partial_groups_is_ceil_of_half():
    """The rule tf_asp.masks used for 2:4 before patterns existed: 1 of 1, 1 of 2, 2 of 3."""
    two_four = Pattern(2, 4)
    assert [two_four.kept(k) for k in range(1, 5)] == [1, 1, 2, 2]
    assert all(two_four.kept(c) == (c + 1) // 2 for c in range(100))


def test_patterns_module_needs_neither_numpy_nor_tensorflow():
    blocked = "import sys; sys.modules.update(numpy=None, tensorflow=None, keras=None); "
    code = blocked + "from tf_asp.patterns import parse_pattern; print(parse_pattern('4:8'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "4:8\n"
