"""Sparsity report: which kernels are 2:4 (or N:M), and which sparse Tensor Cores can run.

Works on a Keras 3 or tf_keras model (every GEMM kernel: `tf_asp.registry`), on
a `.keras` or `.h5` file, on an exported SavedModel directory and on an ONNX
file (every weight a MatMul, Conv2D or Gemm multiplies by, in the view serving
has of it: `tf_asp.report.serving_graph` and `tf_asp.report.onnx`), so the
structure that serving will see can be checked after export, without tf_asp's
optimizer:

```python
report = tf_asp.sparsity_report("./exported_model")
for row in report.rows:
    print(row.name, row.is_2to4, row.shape_qualifies)
```

or from a shell: `python -m tf_asp.report ./exported_model` (or `model.onnx`,
`weights.h5`, `model.keras`).

A kernel is *2:4* when at most 2 of every 4 consecutive input channels (axis
-2) are non-zero (`tf_asp.masks.is_2to4`); `pattern="1:2"` (or any N:M,
`--pattern` on the command line) checks that pattern instead
(`has_pattern`). Its shape *qualifies* for sparse
Tensor Cores when its input dim is a multiple of 16 and its output dim a
multiple of 8, a 4-D kernel `(H, W, C, K)` viewed as `(C, H*W*K)` (the rule of
`tf_asp.registry.shape_reason`). Sparse Tensor Cores speed up the kernels
that are both.
"""

import dataclasses
import os

import numpy as np

from tf_asp import compat
from tf_asp import masks
from tf_asp import registry
from tf_asp.log import logger
from tf_asp.patterns import parse_pattern

KERNEL_RANKS = (2, 4)  # Dense (C, K) and Conv2D (H, W, C, K) kernels
H5_EXTENSIONS = (".h5", ".hdf5")


@dataclasses.dataclass(frozen=True)
class KernelSparsity:
    """One kernel of a report.

    Attributes:
        name: the variable's path, e.g. `"conv2d_1/kernel"`.
        shape: the kernel's shape; axis -2 is the input channels.
        zero_fraction: the fraction of its weights that are exactly 0.0.
        is_2to4: at most 2 of every 4 input channels are non-zero.
        shape_qualifies: the shape suits sparse Tensor Cores.
        reason: why the shape does not qualify (None when it does).
        pattern: the N:M pattern the report checks (`"2:4"` by default).
        has_pattern: at most N of every M input channels are non-zero.
    """

    name: str
    shape: tuple
    zero_fraction: float
    is_2to4: bool
    shape_qualifies: bool
    reason: str = None
    pattern: str = "2:4"
    has_pattern: bool = None

    def __post_init__(self):
        if self.has_pattern is None:
            object.__setattr__(self, "has_pattern", self.is_2to4)

    @property
    def sparse_ready(self):
        """The pattern with a qualifying shape: sparse Tensor Cores can run it
        (for the hardware patterns 2:4 and 1:2)."""
        return self.has_pattern and self.shape_qualifies


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """The kernels of a model or SavedModel and their N:M structure.

    `str(report)` is the table that `sparsity_report` prints.
    """

    source: str
    rows: tuple
    pattern: str = "2:4"

    @property
    def sparse_ready(self):
        """The rows sparse Tensor Cores can run (the pattern, qualifying shape)."""
        return tuple(row for row in self.rows if row.sparse_ready)

    @property
    def zero_fraction(self):
        """The fraction of all kernel weights that are zero."""
        sizes = [int(np.prod(row.shape)) for row in self.rows]
        zeros = sum(row.zero_fraction * size for row, size in zip(self.rows, sizes))
        return zeros / max(sum(sizes), 1)

    def summary(self):
        """One sentence: how many kernels sparse Tensor Cores can run."""
        ready = len(self.sparse_ready)
        other = sum(row.has_pattern and not row.shape_qualifies for row in self.rows)
        also = f" ({other} more are {self.pattern} with other shapes)" if other else ""
        return (
            f"{ready} of {len(self.rows)} kernels are {self.pattern} with a "
            f"sparse-Tensor-Core shape{also}; {self.zero_fraction:.1%} of all "
            "kernel weights are zero."
        )

    def __str__(self):
        header = ("kernel", "shape", "zeros", self.pattern, "Tensor Core shape")
        lines = [
            (
                row.name,
                str(row.shape),
                f"{row.zero_fraction:.1%}",
                "yes" if row.has_pattern else "no",
                "yes" if row.shape_qualifies else f"no: {row.reason}",
            )
            for row in self.rows
        ]
        widths = [max(len(cells[i]) for cells in [header] + lines) for i in range(4)]
        table = [f"Sparsity report of {self.source}"]
        for cells in [header] + lines:
            table.append(
                "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + cells[4]
            )
        table.append(self.summary())
        return "\n".join(table)


def sparsity_report(model_or_path, print_table=True, pattern="2:4"):
    """Reports the N:M structure of a Keras model's, SavedModel's or ONNX file's kernels.

    Args:
        model_or_path: a built Keras 3 or tf_keras model (its GEMM kernels:
            `tf_asp.registry`), or the path of a SavedModel directory (the
            weights its signatures multiply by, in GEMM view:
            `tf_asp.report.serving_graph`), of a `.keras` file, of an `.h5`
            file of weights or of a whole model (its 2-D and 4-D float
            variables), or of an `.onnx` file (the initializers its Conv,
            MatMul and Gemm nodes multiply by: `tf_asp.report.onnx`).
        print_table: print the table and its one-sentence summary.
        pattern: the N:M pattern to check, `"2:4"` (default), `"1:2"`, ...

    Returns:
        A `SparsityReport`: `.rows` holds one `KernelSparsity` per kernel
        (name, shape, zero_fraction, is_2to4, shape_qualifies, reason,
        pattern, has_pattern), `.sparse_ready` those that sparse Tensor
        Cores can run.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the path is not a SavedModel directory, `.h5`, `.keras`
            or ONNX file, or the model is not built.
        ImportError: an `.onnx` path, and the onnx package is not installed.
        TypeError: `model_or_path` is neither a Keras model nor a path.

    Example:

    ```python
    model.export("exported_model")
    report = tf_asp.sparsity_report("exported_model")
    assert all(row.is_2to4 for row in report.rows if row.shape_qualifies)
    ```
    """
    from tf_asp.pruning import keras_of

    pattern = str(parse_pattern(pattern))
    if keras_of(model_or_path) is not None and hasattr(model_or_path, "layers"):
        rows = _model_rows(model_or_path, pattern)
        report = SparsityReport(f"model '{model_or_path.name}'", rows, pattern)
    elif isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        report = SparsityReport(path, _path_rows(path, pattern), pattern)
    else:
        raise TypeError(
            "sparsity_report takes a Keras model or the path of a SavedModel "
            f"directory, .h5 or .keras file, not {type(model_or_path).__name__}."
        )
    if print_table:
        print(report)
    return report


def _model_rows(model, pattern="2:4"):
    """One row per GEMM kernel of a Keras model (`tf_asp.registry`)."""
    rows = []
    for gemm in registry.gemm_layers(model):
        if gemm.reason is not None and gemm.reason.startswith("layer is not built"):
            raise ValueError(
                f"Layer '{gemm.name}' of model '{model.name}' is not built, "
                "so it has no kernel to report; build the model first (call "
                "it on a batch or use keras.Input)."
            )
        for kernel in gemm.kernels:
            reason = gemm.reason or kernel.unprunable_reason()
            variable = kernel.variable
            rows.append(
                _row(
                    compat.variable_path(variable),
                    variable.numpy(),
                    reason,
                    kernel.input_axes,
                    pattern,
                )
            )
        if not gemm.kernels:
            variable = gemm.layer.kernel
            name = compat.variable_path(variable)
            rows.append(_row(name, variable.numpy(), gemm.reason, None, pattern))
    return tuple(rows)


def _path_rows(path, pattern="2:4"):
    import keras
    import tensorflow as tf

    if path.endswith(".onnx"):
        from tf_asp.report import onnx
        from tf_asp.report.served import kernel_rows

        return kernel_rows(onnx.onnx_kernels(onnx.load_onnx(path)), pattern)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No SavedModel at '{path}': the path does not exist; export one "
            "with `model.export(path)` (or `python main.py --output_dir "
            "path`) first."
        )
    if os.path.isfile(path) and path.endswith(".keras"):
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as error:  # not a zip, or classes Keras cannot find
            raise ValueError(
                f"Keras could not load the .keras file '{path}' "
                f"({type(error).__name__}: {error}); save it again with "
                "`model.save(path)`."
            ) from error
        return _model_rows(model, pattern)
    if os.path.isfile(path) and path.endswith(H5_EXTENSIONS):
        return _h5_rows(path, pattern)
    if not (os.path.isdir(path) and tf.saved_model.contains_saved_model(path)):
        raise ValueError(
            f"'{path}' is not a SavedModel directory (it has no "
            "saved_model.pb) nor an .h5, .keras or .onnx file; pass the directory that "
            "`model.export(path)` or `tf.saved_model.save` wrote."
        )
    try:
        loaded = tf.saved_model.load(path)
    except Exception as error:  # a corrupt or incompatible SavedModel
        raise ValueError(
            f"TensorFlow could not load the SavedModel at '{path}' "
            f"({type(error).__name__}: {error}); re-export it with this "
            "TensorFlow version."
        ) from error
    from tf_asp.report import serving_graph
    from tf_asp.report.served import kernel_rows

    try:
        kernels = serving_graph.savedmodel_kernels(loaded)
    except Exception as error:  # a signature TensorFlow cannot freeze
        logger.warning("Could not read the serving graph of %s (%s).", path, error)
        kernels = []
    if kernels:
        return kernel_rows(kernels, pattern)
    logger.warning(
        "No MatMul, BatchMatMul or Conv2D of the signatures of %s reads a variable; "
        "listing every 2-D and 4-D float variable instead.",
        path,
    )
    return tuple(
        _row(
            _variable_name(variable),
            variable.numpy(),
            _shape_reason(variable.shape),
            pattern=pattern,
        )
        for variable in _saved_variables(loaded)
        if variable.dtype.is_floating and variable.shape.rank in KERNEL_RANKS
    )


def _h5_rows(path, pattern="2:4"):
    """One row per 2-D or 4-D float weight of an `.h5` file, optimizer excluded.

    Reads the file with h5py, whichever Keras wrote it. In tf_keras' layout
    (`model.save("x.h5")`, `model.save_weights("x.h5")`) the attributes
    `layer_names` and `weight_names` list the weights in model order, named
    as the variables are (`dense/kernel:0`, reported as `dense/kernel`);
    otherwise every dataset is read, named by its path in the file.
    """
    import h5py

    try:
        file = h5py.File(path, "r")
    except OSError as error:  # not an HDF5 file
        raise ValueError(
            f"'{path}' is not an HDF5 file ({error}); pass a file that "
            "`model.save_weights` or `model.save` wrote."
        ) from error
    with file:
        weights = file["model_weights"] if "model_weights" in file else file
        if "layer_names" in weights.attrs:
            datasets = [
                (_text(name), weights[_text(layer)][_text(name)])
                for layer in weights.attrs["layer_names"]
                for name in weights[_text(layer)].attrs["weight_names"]
            ]
        else:
            datasets = []
            weights.visititems(lambda name, item: datasets.append((name, item)))
        return tuple(
            _row(name.removesuffix(":0"), item[()], _shape_reason(item.shape), pattern=pattern)
            for name, item in datasets
            if isinstance(item, h5py.Dataset)
            and item.dtype.kind == "f"
            and item.ndim in KERNEL_RANKS
        )


def _text(name):
    """An h5py attribute's string (stored as bytes by tf_keras)."""
    return name.decode() if isinstance(name, bytes) else str(name)


def _saved_variables(loaded):
    """A loaded SavedModel's variables, each once.

    `model.export` saves a `variables` list; `tf.saved_model.save(model)` does
    not, so the variables its signatures read stand in.
    """
    variables = getattr(loaded, "variables", None)
    if variables is None:
        variables = [
            variable for signature in loaded.signatures.values() for variable in signature.variables
        ]
    return list({id(variable): variable for variable in variables}.values())


def _row(name, kernel, reason, input_axes=(-2,), pattern="2:4"):
    """A report row; `input_axes=None` when they are unknown (never N:M)."""
    known = input_axes is not None
    return KernelSparsity(
        name=name,
        shape=tuple(kernel.shape),
        zero_fraction=1.0 - np.count_nonzero(kernel) / max(kernel.size, 1),
        is_2to4=known and masks.is_2to4(kernel, input_axes),
        shape_qualifies=reason is None,
        reason=reason,
        pattern=str(pattern),
        has_pattern=known and masks.is_nm(kernel, input_axes, pattern),
    )


def _variable_name(variable):
    name = variable.name
    return name[: -len(":0")] if name.endswith(":0") else name


def _shape_reason(shape):
    """The registry's shape rule for a bare kernel shape: (C, K) or (..., C, K)."""
    shape = tuple(shape)
    return registry.shape_reason(shape, input_size=shape[-2], output_size=shape[-1])
