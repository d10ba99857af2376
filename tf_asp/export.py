"""ONNX export that keeps the 2:4 zeros: `tf_asp.export_onnx` and its command line.

```bash
python -m tf_asp.export ./exported_model --onnx model.onnx   # a SavedModel directory
python -m tf_asp.export pruned.keras --onnx model.onnx       # a .keras file
```

```python
report = tf_asp.export_onnx(model, "model.onnx")  # a live Keras model
report.sparse_ready  # the ONNX kernels sparse Tensor Cores can run
```

tf2onnx converts the serving function (a SavedModel's `serving_default`
signature, or the Keras model called with `training=False`): it freezes the
variables and folds constants, which may merge an inference
BatchNormalization's per-channel scale into the convolution before it. Such a
fold keeps every zero; one that fills a zero in would break the 2:4 pattern.
So the written file is checked before it takes its name: every 2:4 kernel the
serving function multiplies by (`tf_asp.report.serving_graph`) must have a
counterpart among the ONNX kernels (`tf_asp.report.onnx`) of the same GEMM
shape that is zero wherever it is zero. If one has none, the error names it
and the ONNX node that now multiplies by a weight of its shape, and nothing is
written.
"""

import argparse
import os
import sys

import numpy as np

ONNX_MISSING = (
    "ONNX export needs tf2onnx and onnx, which are not installed; install them "
    "with `pip install 'tf_asp[onnx]'`."
)


def export_onnx(model, onnx_path, opset=None, print_table=False):
    """Converts a model to ONNX and checks that its 2:4 kernels stay 2:4.

    Args:
        model: a built Keras model, the path of a `.keras` file or of a
            SavedModel directory (its `serving_default` signature), or a
            `tf.function` with an `input_signature`.
        onnx_path: the `.onnx` file to write; its directory must exist.
        opset: the ONNX opset (tf2onnx's default when None).
        print_table: print the sparsity report of the written file.

    Returns:
        The `SparsityReport` of the written ONNX file.

    Raises:
        FileNotFoundError: a model path or the output directory is missing.
        ValueError: the model cannot be read or converted, or a 2:4 kernel
            lost its zeros in the conversion (nothing is written then).
        TypeError: `model` is none of the above.
        ImportError: tf2onnx or onnx is not installed.

    Example:

    ```python
    report = tf_asp.export_onnx("exported_model", "model.onnx")
    [row.name for row in report.sparse_ready]
    ```
    """
    try:
        import onnx
        import tf2onnx
    except ImportError as error:
        raise ImportError(ONNX_MISSING) from error
    from tf_asp.report import onnx as onnx_report
    from tf_asp.report import serving_graph
    from tf_asp.report import sparsity_report

    onnx_path = os.fspath(onnx_path)
    directory = os.path.dirname(os.path.abspath(onnx_path))
    if not onnx_path.endswith(".onnx"):
        raise ValueError(f"The ONNX file to write must end with .onnx, not '{onnx_path}'.")
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Cannot write '{onnx_path}': its directory '{directory}' does not exist."
        )
    function, specs, source = serving_function(model)
    try:
        kernels = serving_graph.function_kernels(function.get_concrete_function(*specs))
        proto, _ = tf2onnx.convert.from_function(function, specs, opset=opset)
        onnx.checker.check_model(proto)
    except Exception as error:  # a graph that cannot be frozen, or ops ONNX lacks
        raise ValueError(
            f"tf2onnx could not convert {source} to ONNX ({_first_line(error)}); "
            "nothing was written."
        ) from error

    partial = os.path.join(directory, f".{os.path.basename(onnx_path)}.{os.getpid()}.partial")
    try:
        onnx.save(proto, partial)
        written = onnx_report.onnx_kernels(onnx_report.load_onnx(partial))
        lost = lost_2to4_kernels(kernels, written)
        if lost:
            raise ValueError(_lost_message(lost[0], written, source, onnx_path))
        os.replace(partial, onnx_path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return sparsity_report(onnx_path, print_table=print_table)


def serving_function(model):
    """The function to convert: `(tf.function, input TensorSpecs, description)`.

    A Keras model (or `.keras` file) is called with `training=False` and its
    outputs are named `output_0`, `output_1`, ... like those of the
    `serving_default` signature that `model.export` writes.
    """
    import keras
    import tensorflow as tf

    if isinstance(model, keras.Model):
        return _keras_function(model) + (f"model '{model.name}'",)
    if hasattr(model, "get_concrete_function"):
        if getattr(model, "input_signature", None) is None:
            raise ValueError(
                "export_onnx needs a tf.function with an input_signature, e.g. "
                "@tf.function(input_signature=[tf.TensorSpec((None, 8), tf.float32)])."
            )
        return model, list(model.input_signature), f"function '{model.__name__}'"
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            "export_onnx takes a Keras model, a tf.function or the path of a "
            f"SavedModel directory or .keras file, not {type(model).__name__}."
        )
    path = os.fspath(model)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No model at '{path}': the path does not exist; pass a SavedModel "
            "directory (`python main.py --output_dir DIR`) or a .keras file."
        )
    if os.path.isfile(path) and path.endswith(".keras"):
        try:
            loaded = keras.models.load_model(path, compile=False)
        except Exception as error:  # not a zip, or classes Keras cannot find
            raise ValueError(
                f"Keras could not load the .keras file '{path}' ({_first_line(error)})."
            ) from error
        return _keras_function(loaded) + (f"'{path}'",)
    if not (os.path.isdir(path) and tf.saved_model.contains_saved_model(path)):
        raise ValueError(
            f"'{path}' is neither a SavedModel directory (it has no saved_model.pb) "
            "nor a .keras file; pass what `model.export(path)` or `model.save(path)` wrote."
        )
    return _signature_function(tf.saved_model.load(path)) + (f"'{path}'",)


def _keras_function(model):
    import tensorflow as tf

    inputs = getattr(model, "inputs", None) if model.built else None
    if not inputs:
        raise ValueError(
            f"Model '{model.name}' has no known inputs to export; build it with keras.Input."
        )
    specs = [tf.TensorSpec(x.shape, x.dtype, name=x.name) for x in inputs]

    def serve(*tensors):
        outputs = model(tensors[0] if len(tensors) == 1 else list(tensors), training=False)
        return {f"output_{i}": output for i, output in enumerate(tf.nest.flatten(outputs))}

    return tf.function(serve), specs


def _signature_function(loaded):
    import tensorflow as tf

    if not loaded.signatures:
        raise ValueError("The SavedModel has no signature to export; write it with model.export.")
    key = (
        "serving_default"
        if "serving_default" in loaded.signatures
        else next(iter(loaded.signatures))
    )
    _, named_specs = loaded.signatures[key].structured_input_signature
    names = list(named_specs)
    specs = [tf.TensorSpec(spec.shape, spec.dtype, name=name) for name, spec in named_specs.items()]

    def serve(*tensors):  # reads `loaded`, which keeps the variables alive
        return loaded.signatures[key](**dict(zip(names, tensors)))

    return tf.function(serve), specs


def lost_2to4_kernels(kernels, exported):
    """The 2:4 `kernels` whose zeros no `exported` kernel keeps.

    Each 2:4 kernel (most zeros first) claims one exported kernel of the same
    GEMM shape that is zero wherever it is zero: the same weights, or the
    weights scaled per output channel by a fold. Both arguments are lists of
    `tf_asp.report.served.ServedKernel`.
    """
    from tf_asp import masks

    pruned = [kernel for kernel in kernels if masks.is_2to4(kernel.weights)]
    pruned.sort(key=lambda kernel: np.count_nonzero(kernel.weights))
    free = list(exported)
    lost = []
    for kernel in pruned:
        zeros = kernel.weights == 0
        match = next(
            (
                candidate
                for candidate in free
                if candidate.weights.shape == kernel.weights.shape
                and not np.any(candidate.weights[zeros])
            ),
            None,
        )
        if match is None:
            lost.append(kernel)
        else:
            free.remove(match)
    return lost


def _lost_message(kernel, exported, source, onnx_path):
    shape = tuple(kernel.weights.shape)
    nodes = [f"'{other.node}'" for other in exported if other.weights.shape == shape]
    where = (
        f"ONNX node {' and '.join(nodes)} multiplies by a weight of its GEMM shape {shape} "
        "that is not zero where it is"
        if nodes
        else f"no ONNX Conv, MatMul or Gemm node multiplies by a weight of its GEMM shape {shape}"
    )
    return (
        f"The 2:4 kernel '{kernel.name}' of {source} (read by '{kernel.node}') lost its "
        f"zeros in the conversion to ONNX: {where}; nothing was written to '{onnx_path}'."
    )


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(
        prog="python -m tf_asp.export",
        description="Convert a SavedModel or .keras file to ONNX, keeping its 2:4 kernels 2:4.",
    )
    parser.add_argument("model", help="a SavedModel directory or a .keras file")
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the file to write")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (tf2onnx's default)")
    args = parser.parse_args(argv)
    try:
        report = export_onnx(args.model, args.onnx, opset=args.opset, print_table=True)
    except (FileNotFoundError, ValueError, ImportError) as error:
        sys.exit(f"{parser.prog}: error: {error}")
    if not any(row.is_2to4 and row.zero_fraction > 0 for row in report.rows):
        print(
            f"{parser.prog}: warning: no kernel of {args.model} is 2:4, so sparse Tensor "
            "Cores cannot speed it up; prune it with tf_asp.AspOptimizerWrapperV2 first.",
            file=sys.stderr,
        )
    print(f"Wrote {args.onnx}")


if __name__ == "__main__":
    main()
