"""`python -m tf_asp.report PATH [--pattern N:M]`: print the sparsity report of
a SavedModel, a `.keras` file, an `.h5` file (weights or a whole model) or an
ONNX file, for 2:4 or another N:M pattern.

Exits with status 1 and one sentence on stderr when PATH is missing or is none
of these.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tf_asp.report",
        description="Print which kernels of a SavedModel (or .keras, .h5 or .onnx file) "
        "are 2:4 (or N:M) sparse and which shapes suit sparse Tensor Cores.",
    )
    parser.add_argument("path", help="a SavedModel directory, or a .keras, .h5 or .onnx file")
    parser.add_argument(
        "--pattern",
        default="2:4",
        help="the N:M pattern to check: 2:4 (default), 1:2 (TF32), or N:M with M in 4, 8, 16",
    )
    args = parser.parse_args(argv)

    from tf_asp.patterns import parse_pattern
    from tf_asp.report import sparsity_report

    try:
        parse_pattern(args.pattern)
    except ValueError as error:
        sys.exit(f"{parser.prog}: error: --pattern: {error}")
    try:
        sparsity_report(args.path, pattern=args.pattern)
    except (FileNotFoundError, ValueError, ImportError) as error:
        sys.exit(f"{parser.prog}: error: {error}")


if __name__ == "__main__":
    main()
