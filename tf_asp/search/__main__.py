"""`python -m tf_asp.search`: the published ChannelPermutations command line.

    python -m tf_asp.search --channels 64 --filters 128 \\
        optimize_stripe_groups,8,0 optimize_stripe_groups,12,0 channel_swap,0 random,1000
    python -m tf_asp.search --infile conv_kernel.npy --print_permutation 1 \\
        optimize_stripe_groups,8,100
    python -m tf_asp.search --pattern 4:8 optimize_stripe_groups,16,0 channel_swap,0

Prints one row per strategy (magnitude kept, efficacy, duration) after the
reference rows: unpruned, unstructured at the pattern's sparsity, each row's
largest N/M fraction (the bound, efficacy 100: "50% rows" for 2:4) and the
default order (efficacy 0). `--pattern N:M` (default 2:4) is what the mask
keeps: every row and strategy is measured for it.
"""

import argparse
import csv
import logging
import sys

import numpy as np

from tf_asp.log import set_verbosity
from tf_asp.patterns import DEFAULT_PATTERN
from tf_asp.patterns import parse_pattern
from tf_asp.search import DEVICES
from tf_asp.search import as_search_matrix
from tf_asp.search import find_permutation
from tf_asp.search import metrics
from tf_asp.search import parse_strategy
from tf_asp.search.strategies import stripe_group_window


def _flag(text):
    """The published tool's booleans: 1/0, true/false, yes/no."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "y"):
        return True
    if value in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected 1 or 0, got {text!r}")


def _pattern(text):
    try:
        return parse_pattern(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _strategy(text):
    try:
        parse_strategy(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def parser():
    p = argparse.ArgumentParser(
        prog="python -m tf_asp.search",
        description="Search channel permutations that make N:M (default 2:4) pruning keep "
        "more magnitude.",
    )
    p.add_argument(
        "--infile",
        default="random",
        help=".npy file: a 2-D matrix (rows = outputs, columns = input channels; "
        "save a Keras Dense kernel (C, K) transposed) or a 4-D TensorFlow "
        "Conv2D kernel (H, W, C, K), reshaped to (K*H*W, C); default: random",
    )
    p.add_argument(
        "--pattern",
        type=_pattern,
        default=DEFAULT_PATTERN,
        help="N:M: keep N of every M input channels (2:4, 1:2, or M = 4, 8, 16; default 2:4)",
    )
    p.add_argument("--channels", type=int, default=64, help="columns of the random matrix")
    p.add_argument("--filters", type=int, default=128, help="rows of the random matrix")
    p.add_argument(
        "--verbosity", type=int, default=0, help="0: results only; 11+: progress; 20+: debug"
    )
    p.add_argument(
        "--seed", type=int, default=1, help="seed of the random matrix and of the searches"
    )
    p.add_argument("--pretty_print", type=_flag, default=True, help="aligned table (1) or CSV (0)")
    p.add_argument(
        "--unstructured",
        type=float,
        default=0.0,
        help="prune this fraction of the smallest weights first; a negative value "
        "searches the smallest sparsity each strategy turns into N:M losslessly",
    )
    p.add_argument(
        "--device",
        "--gpu",
        dest="device",
        default="auto",
        help=f"one of {DEVICES} (--gpu 1/0 also works)",
    )
    p.add_argument("--time_limit", type=float, default=None, help="seconds per strategy")
    p.add_argument(
        "--check_permutation",
        type=_flag,
        default=False,
        help="check the permutation against the permuted matrix",
    )
    p.add_argument(
        "--intermediate_steps",
        type=int,
        default=0,
        help="also print N permutations evenly spaced in efficacy",
    )
    p.add_argument("--print_permutation", type=_flag, default=False, help="print each permutation")
    p.add_argument(
        "strategy",
        nargs="+",
        type=_strategy,
        help="optimize_stripe_groups,WINDOW,ESCAPES | channel_swap,ESCAPES | "
        "random,COUNT | exhaustive",
    )
    return p


def check_strategy(text, pattern):
    """A ValueError if strategy `text` cannot search for `pattern`."""
    function, options = parse_strategy(text, pattern)
    if "window" in options:
        stripe_group_window(options["window"], pattern)


def load_matrix(args):
    if args.infile == "random":
        if args.channels <= 0 or args.filters <= 0:
            raise ValueError("--channels and --filters must be positive.")
        return np.random.RandomState(args.seed).rand(args.filters, args.channels)
    try:
        array = np.load(args.infile, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read --infile {args.infile}: {error}") from None
    if array.ndim == 4:  # TensorFlow Conv2D (H, W, C, K)
        return as_search_matrix(array)
    return array


def prune_unstructured(matrix, sparsity):
    """Zeros the smallest `sparsity` fraction of the magnitudes."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"--unstructured must be in [0, 1); got {sparsity}.")
    count = int(round(sparsity * matrix.size))
    if count == 0:
        return matrix
    pruned = matrix.copy().ravel()
    pruned[np.argsort(np.abs(pruned), kind="stable")[:count]] = 0
    return pruned.reshape(matrix.shape)


def minimum_lossless_sparsity(matrix, run, pattern, steps=12):
    """The smallest unstructured sparsity (within 2**-steps of [1 - N/M, 1))
    that `run` turns into N:M without losing magnitude, by bisection."""
    low, high = 1 - pattern.density, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        pruned = prune_unstructured(matrix, middle)
        result = run(pruned)
        if result.magnitude >= np.abs(pruned).sum() * (1 - 1e-9):
            high = middle
        else:
            low = middle
    return high


def intermediate_permutations(matrix, permutation, steps, pattern):
    """`steps` permutations between identity and `permutation` whose kept
    magnitudes divide the gain most evenly: swaps walk from one to the other,
    and the orders closest to each target are kept."""
    current = np.arange(len(permutation))
    path = [current.copy()]
    position = {c: i for i, c in enumerate(current)}
    for i, column in enumerate(permutation):
        j = position[column]
        if j != i:
            position[current[i]], position[current[j]] = j, i
            current[[i, j]] = current[[j, i]]
            path.append(current.copy())
    kept = np.array([metrics.kept_magnitude(matrix, p, pattern) for p in path])
    targets = np.linspace(kept[0], kept[-1], steps + 2)[1:-1]
    return [(float(kept[k]), path[k]) for k in (int(np.argmin(np.abs(kept - t))) for t in targets)]


def check_permutation(matrix, result):
    """True if the permuted matrix is a column permutation of `matrix` that
    keeps the reported magnitude (for the result's pattern)."""
    permuted = matrix[:, result.permutation]
    same_columns = sorted(map(bytes, matrix.T.copy())) == sorted(map(bytes, permuted.T.copy()))
    kept = metrics.kept_magnitude(permuted, pattern=result.pattern)
    return same_columns and np.isclose(kept, result.magnitude)


class Table:
    """The published tool's aligned table, or real CSV (names hold commas)."""

    def __init__(self, pretty):
        self.pretty = pretty
        self.csv = csv.writer(sys.stdout, lineterminator="\n")

    def row(self, *cells):
        if self.pretty:
            name, *rest = cells
            print(f"{name:<35}," + ",".join(f"{c:>15}" for c in rest))
        else:
            sys.stdout.flush()
            self.csv.writerow([str(c).strip() for c in cells])


def main(argv=None):
    args = parser().parse_args(argv)
    if args.device.strip() in ("0", "1"):
        args.device = "auto" if args.device.strip() == "1" else "CPU"
    if args.verbosity >= 11:
        set_verbosity(logging.DEBUG if args.verbosity >= 20 else logging.INFO)
    try:
        for strategy in args.strategy:  # before any row is printed
            check_strategy(strategy, args.pattern)
        matrix = metrics.check_matrix(load_matrix(args), name="input matrix", pattern=args.pattern)
        if args.unstructured > 0:
            matrix = prune_unstructured(matrix, args.unstructured)
        run_all(args, matrix)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def run_all(args, matrix):
    table = Table(args.pretty_print)
    pattern = args.pattern
    identity = metrics.kept_magnitude(matrix, pattern=pattern)
    bound = metrics.row_bound_magnitude(matrix, pattern)
    unstructured = metrics.unstructured_magnitude(matrix, 1 - pattern.density)
    table.row("strategy", "magnitude", "efficacy", "duration")
    table.row("unpruned", f"{np.abs(matrix).sum():.3f}", "-", "-")
    table.row("unstructured", f"{unstructured:.3f}", "-", "-")
    table.row(f"{100 * pattern.density:g}% rows", f"{bound:.3f}", "100.0", "-")
    table.row(f"default {pattern}", f"{identity:.3f}", "0.0", "0.000")
    ok = True
    for strategy in args.strategy:

        def run(m, strategy=strategy):
            return find_permutation(
                m,
                strategy,
                device=args.device,
                time_limit=args.time_limit,
                seed=args.seed,
                pattern=pattern,
            )

        if args.unstructured < 0:
            sparsity = minimum_lossless_sparsity(matrix, run, pattern)
            table.row(strategy, "-", "-", f"{sparsity:.4f}")
            continue
        result = run(matrix)
        if args.intermediate_steps > 0:
            for kept, permutation in intermediate_permutations(
                matrix, result.permutation, args.intermediate_steps, pattern
            ):
                print(f"({kept:.4f}, {permutation.tolist()})")
        note = " (time limit)" if result.timed_out else ""
        table.row(
            strategy,
            f"{result.magnitude:.3f}",
            f"{result.efficacy:.1f}",
            f"{result.duration:.3f}{note}",
        )
        if args.print_permutation:
            print(result.permutation.tolist())
        if args.check_permutation:
            passed = check_permutation(matrix, result)
            ok = ok and passed
            print(f"permutation check {strategy}: {'passed' if passed else 'FAILED'}")
    if not ok:
        raise ValueError("a permutation check failed")


if __name__ == "__main__":
    sys.exit(main())
