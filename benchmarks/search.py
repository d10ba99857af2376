"""Permutation-search quality and speed against the published results.

    python benchmarks/search.py                  # every section, every backend here
    python benchmarks/search.py --sections reference --devices CPU --repeats 5

Sections:
- reference: the published table's matrix (`np.random.seed(1); rand(128, 64)`)
  and its strategies, with the published efficacy and times beside ours.
- large: 1536 x 384 and 384 x 1536 random matrices, window 8, no escapes.
- exhaustive: the true optimum vs stripe groups on 100 random 32 x 16 matrices.
- patterns: search time and efficacy per N:M pattern on 1536 x 384 and
  384 x 1536 matrices: the pattern's default strategy on every backend, and
  channel swaps and the smallest stripe-group window without escapes natively.

Times are the median of `--repeats` runs (one run for runs over 2 s).
"""

import argparse
import os
import statistics
import time

import numpy as np
from machine import cpu_name

from tf_asp import search
from tf_asp.search import metrics
from tf_asp.search.strategies import stripe_group_window

# The published table (V100 GPU; CPU times where the seed lists them).
PUBLISHED = {
    "channel_swap,0": (32.1, 0.214, 55.972),
    "channel_swap,100": (32.5, 2.249, 450.025),
    "channel_swap,1000": (36.0, 20.248, None),
    "optimize_stripe_groups,8,0": (35.5, 0.013, 60.653),
    "optimize_stripe_groups,8,100": (35.5, 0.152, 465.709),
    "optimize_stripe_groups,8,1000": (35.6, 1.387, None),
    "optimize_stripe_groups,12,0": (36.6, 0.860, None),
    "random,1000": (11.1, 0.116, 14.889),
    "random,10000": (11.2, 1.149, None),
    "random,100000": (14.1, 11.510, None),
}
# Searches too slow for a benchmark run on the NumPy fallback.
NUMPY_TIME_LIMIT = 60.0
# ... and for the wider patterns' stripe groups natively (the wrapper's default).
NATIVE_TIME_LIMIT = 60.0
PATTERNS = ("1:2", "2:4", "1:4", "2:8", "4:8", "8:16")


def timed(matrix, strategy, device, repeats, time_limit=None, pattern="2:4"):
    results = []
    for _ in range(repeats):
        results.append(
            search.find_permutation(
                matrix, strategy, device=device, time_limit=time_limit, seed=0, pattern=pattern
            )
        )
        if results[-1].duration > 2.0:
            break
    return results[-1], statistics.median(r.duration for r in results)


def fmt_time(seconds):
    return (
        "-"
        if seconds is None
        else (f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s")
    )


def reference_section(devices, repeats):
    m = np.random.RandomState(1).rand(128, 64)
    print("\n## Reference matrix: np.random.seed(1); rand(128, 64)\n")
    print(f"| {'strategy':<30} | {'magnitude':>9} |")
    print(f"|{'-' * 32}|{'-' * 11}:|")
    for name, value in (
        ("unpruned", np.abs(m).sum()),
        ("unstructured 50%", metrics.unstructured_magnitude(m)),
        ("50% rows (efficacy 100)", metrics.rows_half_magnitude(m)),
        ("default 2:4 (efficacy 0)", metrics.kept_magnitude(m)),
    ):
        print(f"| {name:<30} | {value:9.3f} |")
    print()
    print(
        f"| {'strategy':<30} | {'backend':<7} | {'magnitude':>9} | {'efficacy':>8} | {'time':>10} "
        f"| {'published eff.':>14} | {'published GPU':>13} | {'published CPU':>13} |"
    )
    print(
        f"|{'-' * 32}|{'-' * 9}|{'-' * 10}:|{'-' * 9}:|{'-' * 11}:"
        f"|{'-' * 15}:|{'-' * 14}:|{'-' * 14}:|"
    )
    for strategy, (efficacy, gpu, cpu) in PUBLISHED.items():
        for device in devices:
            limit = NUMPY_TIME_LIMIT if device == "numpy" else None
            result, seconds = timed(m, strategy, device, repeats, limit)
            note = " (limit)" if result.timed_out else ""
            print(
                f"| {strategy:<30} | {result.backend:<7} | {result.magnitude:9.3f} "
                f"| {result.efficacy:8.2f} | {fmt_time(seconds) + note:>10} | {efficacy:14.1f} "
                f"| {fmt_time(gpu):>13} | {fmt_time(cpu):>13} |",
                flush=True,
            )
            if strategy.startswith("random"):
                break  # NumPy on every device


def large_section(devices, repeats):
    print("\n## Larger matrices (rows x columns), optimize_stripe_groups,8,0\n")
    print(f"| {'matrix':<11} | {'backend':<7} | {'efficacy':>8} | {'time':>10} |")
    print(f"|{'-' * 13}|{'-' * 9}|{'-' * 9}:|{'-' * 11}:|")
    for shape in ((1536, 384), (384, 1536)):
        m = np.random.RandomState(1).rand(*shape)
        for device in devices:
            limit = NUMPY_TIME_LIMIT if device == "numpy" else None
            result, seconds = timed(m, "optimize_stripe_groups,8,0", device, repeats, limit)
            note = " (limit)" if result.timed_out else ""
            print(
                f"| {shape[0]:>4} x {shape[1]:<4} | {result.backend:<7} | {result.efficacy:8.2f} "
                f"| {fmt_time(seconds) + note:>10} |",
                flush=True,
            )


def exhaustive_section(device, count=100):
    print(f"\n## Exhaustive optimum vs stripe groups: {count} random 32 x 16 matrices ({device})\n")
    rng = np.random.default_rng(0)
    matrices = [rng.random((32, 16)) for _ in range(count)]
    start = time.perf_counter()
    optimum = [search.find_permutation(m, "exhaustive", device=device) for m in matrices]
    exhaustive_seconds = (time.perf_counter() - start) / count
    print(
        f"| {'strategy':<30} | {'mean efficacy':>13} | {'mean gap to optimum':>19} "
        f"| {'optimum found':>13} | {'time / matrix':>13} |"
    )
    print(f"|{'-' * 32}|{'-' * 14}:|{'-' * 20}:|{'-' * 14}:|{'-' * 14}:|")
    print(
        f"| {'exhaustive':<30} | {np.mean([r.efficacy for r in optimum]):13.2f} | {'-':>19} "
        f"| {count:>13} | {fmt_time(exhaustive_seconds):>13} |"
    )
    for strategy in (
        "optimize_stripe_groups,8,0",
        "optimize_stripe_groups,8,100",
        "optimize_stripe_groups,12,0",
        "channel_swap,0",
        "channel_swap,100",
    ):
        start = time.perf_counter()
        results = [search.find_permutation(m, strategy, device=device, seed=0) for m in matrices]
        seconds = (time.perf_counter() - start) / count
        gaps = [o.efficacy - r.efficacy for o, r in zip(optimum, results)]
        found = sum(r.magnitude >= o.magnitude * (1 - 1e-12) for o, r in zip(optimum, results))
        print(
            f"| {strategy:<30} | {np.mean([r.efficacy for r in results]):13.2f} "
            f"| {np.mean(gaps):13.2f} pts. | {found:>13} | {fmt_time(seconds):>13} |",
            flush=True,
        )


def pattern_strategies(columns, pattern):
    """(strategy, native only) pairs benchmarked for a pattern: its default,
    channel swaps and its smallest stripe-group window, without escapes."""
    default = search.default_strategy(columns, pattern)
    rows = [(default, False)]
    for extra in ("channel_swap,0", f"optimize_stripe_groups,{_smallest_window(pattern)},0"):
        if extra != default and not extra.endswith("None,0"):
            rows.append((extra, True))
    return rows


def _smallest_window(pattern):
    try:
        return stripe_group_window(None, pattern)
    except ValueError:  # M = 16 has no stripe groups
        return None


def patterns_section(devices, repeats, patterns=PATTERNS):
    print("\n## Patterns: time and efficacy per N:M pattern (no escapes unless the default)\n")
    print(
        f"| {'pattern':<7} | {'matrix':<11} | {'strategy':<30} | {'backend':<7} | {'efficacy':>8} "
        f"| {'time':>15} |"
    )
    print(f"|{'-' * 9}|{'-' * 13}|{'-' * 32}|{'-' * 9}|{'-' * 9}:|{'-' * 16}:|")
    for shape in ((1536, 384), (384, 1536)):
        m = np.random.RandomState(1).rand(*shape)
        for pattern in patterns:
            for strategy, native_only in pattern_strategies(shape[1], pattern):
                for device in devices:
                    if device == "numpy" and native_only:
                        continue
                    limit = NUMPY_TIME_LIMIT if device == "numpy" else NATIVE_TIME_LIMIT
                    try:
                        result, seconds = timed(m, strategy, device, repeats, limit, pattern)
                    except ValueError:  # more stripe groups than a search can list
                        print(
                            f"| {pattern:<7} | {shape[0]:>4} x {shape[1]:<4} | {strategy:<30} "
                            f"| {'-':<7} | {'-':>8} | {'too many groups':>15} |"
                        )
                        break
                    note = " (limit)" if result.timed_out else ""
                    print(
                        f"| {pattern:<7} | {shape[0]:>4} x {shape[1]:<4} | {strategy:<30} "
                        f"| {result.backend:<7} | {result.efficacy:8.2f} "
                        f"| {fmt_time(seconds) + note:>15} |",
                        flush=True,
                    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["reference", "large", "exhaustive", "patterns"],
        choices=["reference", "large", "exhaustive", "patterns"],
    )
    parser.add_argument(
        "--patterns",
        nargs="+",
        default=list(PATTERNS),
        help="patterns of the patterns section (default: %(default)s)",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        default=None,
        help="backends to time (default: GPU if usable, CPU, numpy)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    devices = args.devices
    if devices is None:
        devices = ["CPU", "numpy"]
        if search.select_backend("auto").backend == "CUDA":
            devices.insert(0, "GPU")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; backends: {', '.join(devices)}")
    if "reference" in args.sections:
        reference_section(devices, args.repeats)
    if "large" in args.sections:
        large_section(devices, args.repeats)
    if "exhaustive" in args.sections:
        exhaustive_section(devices[0])
    if "patterns" in args.sections:
        patterns_section(devices, args.repeats, args.patterns)


if __name__ == "__main__":
    main()
