"""`python -m tf_asp.report PATH`: print the sparsity report of a SavedModel,
a `.keras` file or an ONNX file.

Exits with status 1 and one sentence on stderr when PATH is missing or is not
a SavedModel directory, `.keras` file or ONNX file.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tf_asp.report",
        description="Print which kernels of a SavedModel (or .keras or .onnx file) are "
        "2:4 sparse and which shapes suit sparse Tensor Cores.",
    )
    parser.add_argument("path", help="a SavedModel directory, a .keras file or an .onnx file")
    args = parser.parse_args(argv)

    from tf_asp.report import sparsity_report

    try:
        sparsity_report(args.path)
    except (FileNotFoundError, ValueError, ImportError) as error:
        sys.exit(f"{parser.prog}: error: {error}")


if __name__ == "__main__":
    main()
