"""Serve the pruned SavedModel with native TensorFlow or TF-TRT and time it.

    python tftrt_infer.py --use_native_tensorflow
    python tftrt_infer.py --use_tftrt_model                       # sparse compute on
    TF_TRT_SPARSE_MODE=0 python tftrt_infer.py --use_tftrt_model  # sparse compute off

It first checks the SavedModel's 2:4 structure (`tf_asp.sparsity_report`) and
says which kernels sparse Tensor Cores can run. Then it feeds generated batches
to the `serving_default` signature: `--warmup` untimed batches, then `--runs`
timed runs of `--iterations` batches each, and prints every run's throughput
and their median as the average throughput.

`--use_tftrt_model` converts the SavedModel with TF-TRT
(`tf.experimental.tensorrt.Converter`, i.e. `TrtGraphConverterV2`) at
`--precision`, builds the TensorRT engines for the benchmark's batch shape,
saves the result (`--tftrt_output_dir`), and times it the same way. TensorRT's
sparse kernels need an Ampere or newer GPU and FP16 or INT8 precision.
NVIDIA's sparse-enabled TF-TRT reads `TF_TRT_SPARSE_MODE` when it builds
engines (0 turns sparse compute off) and logs `[TF-TRT] Sparse compute
capability is enabled` (or `disabled`); this script logs the same line for the
mode it asks for, and TensorRT's own log says which layers it ran sparse
(`(Sparsity) Layers eligible for sparse math: ...`). TF-TRT needs TensorFlow
built with TensorRT and an NVIDIA GPU; NVIDIA's TensorFlow container
(`nvcr.io/nvidia/tensorflow:<yy.mm>-tf2-py3`) has both.
"""

import argparse
import logging
import os
import statistics
import sys
import time

PRECISIONS = ("FP32", "FP16", "INT8")
CONTAINER = "nvcr.io/nvidia/tensorflow:<yy.mm>-tf2-py3"
SIGNATURE = "serving_default"

logger = logging.getLogger("tf_asp")


class ServingError(RuntimeError):
    """The model cannot be served as asked; the message says what to do."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="tftrt_infer.py", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--use_native_tensorflow",
        action="store_true",
        help="serve the SavedModel with TensorFlow itself",
    )
    mode.add_argument(
        "--use_tftrt_model",
        action="store_true",
        help="convert it with TF-TRT and serve the TensorRT engines",
    )
    parser.add_argument("--saved_model_dir", default="./exported_model")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches before timing")
    parser.add_argument("--iterations", type=int, default=100, help="batches per timed run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument(
        "--precision",
        type=str.upper,
        choices=PRECISIONS,
        default="FP16",
        help="TF-TRT precision (FP16 or INT8 for sparse Tensor Cores)",
    )
    parser.add_argument(
        "--tftrt_output_dir",
        default=None,
        help="where to save the TF-TRT model (default: SAVED_MODEL_DIR_tftrt_PRECISION)",
    )
    parser.add_argument("--verbosity", default="INFO", help="tf_asp log level")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.iterations, args.runs) < 1 or args.warmup < 0:
        parser.error(
            "--batch_size, --iterations and --runs must be positive and "
            "--warmup must not be negative"
        )
    if args.tftrt_output_dir is None:
        suffix = f"_tftrt_{args.precision.lower()}"
        args.tftrt_output_dir = os.path.normpath(args.saved_model_dir) + suffix
    return args


def sparse_mode_enabled(environ=os.environ):
    """Whether TF-TRT may use sparse compute: `TF_TRT_SPARSE_MODE` is not 0."""
    value = environ.get("TF_TRT_SPARSE_MODE", "1").strip()
    try:
        return int(value) != 0
    except ValueError:
        raise ValueError(
            f"TF_TRT_SPARSE_MODE must be an integer (0 turns sparse compute "
            f"off, 1 turns it on), not {value!r}."
        ) from None


def tftrt_missing():
    """What this machine lacks to run TF-TRT, as phrases (empty: nothing)."""
    import tensorflow as tf

    missing = []
    if not tf.sysconfig.get_build_info().get("is_tensorrt_build", False):
        missing.append(f"this TensorFlow {tf.__version__} was built without TensorRT")
    if not tf.config.list_physical_devices("GPU"):
        missing.append("TensorFlow sees no GPU")
    return missing


def missing_tftrt_message(missing):
    """One sentence: what TF-TRT lacks here and how to get it."""
    return (
        "TF-TRT needs TensorFlow built with TensorRT and an NVIDIA GPU, but "
        f"{' and '.join(missing)}; run tftrt_infer.py in NVIDIA's TensorFlow "
        f"container on an Ampere or newer GPU (docker run --gpus all -it --rm "
        f"-v $PWD:/workspace/tf_asp {CONTAINER}), or serve with "
        "--use_native_tensorflow."
    )


def generated_inputs(function, batch_size, seed=0):
    """A batch of random inputs matching `function`'s input signature.

    Returns a dict from input name to tensor, created on the default device
    (the GPU when there is one) so that timing excludes host-to-device copies
    of the inputs.
    """
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(seed)
    _, specs = function.structured_input_signature
    inputs = {}
    for name, spec in specs.items():
        dims = spec.shape.as_list()
        if None in dims[1:]:
            raise ValueError(
                f"Input '{name}' has shape {spec.shape}: only its batch dim "
                "may be unknown for tftrt_infer.py to generate data for it."
            )
        shape = [batch_size] + dims[1:]
        if spec.dtype.is_floating:
            batch = generator.uniform(shape, dtype=tf.float32)
        else:
            batch = tf.zeros(shape, tf.int32)
        inputs[name] = tf.cast(batch, spec.dtype)
    return inputs


def measure_throughput(function, inputs, batch_size, warmup, iterations, runs):
    """Samples per second of `runs` timed runs of `iterations` calls each.

    `warmup` calls run first and are not timed. Each run ends by reading its
    last output back to the host, which waits for all queued GPU work.
    """
    for _ in range(warmup):
        outputs = function(**inputs)
    if warmup:
        _wait(outputs)
    throughputs = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(iterations):
            outputs = function(**inputs)
        _wait(outputs)
        throughputs.append(batch_size * iterations / (time.perf_counter() - start))
    return throughputs


def largest_difference(outputs, expected):
    """The largest absolute difference between two dicts of output tensors."""
    return max(
        float(abs(outputs[key].numpy().astype("float64") - value.numpy()).max())
        for key, value in expected.items()
    )


def _wait(outputs):
    for tensor in outputs.values():
        tensor.numpy()


def report_structure(saved_model_dir):
    """Prints the SavedModel's sparsity report and which kernels qualify."""
    from tf_asp.report import sparsity_report

    report = sparsity_report(saved_model_dir)
    ready = [row.name for row in report.sparse_ready]
    dense = [row.name for row in report.rows if row.shape_qualifies and not row.is_2to4]
    if ready:
        print(f"Sparse Tensor Cores can run: {', '.join(ready)}")
    else:
        logger.warning(
            "No kernel of %s is both 2:4 and of a sparse-Tensor-Core shape, so "
            "sparse compute cannot speed it up; prune it with "
            "tf_asp.AspOptimizerWrapperV2 before exporting.",
            saved_model_dir,
        )
    if dense:
        print(f"Shaped for sparse Tensor Cores but not 2:4: {', '.join(dense)}")
    return report


def check_tftrt(precision):
    """Raises `ServingError` when TF-TRT cannot run here; logs the sparse mode."""
    import tensorflow as tf

    missing = tftrt_missing()
    if missing:
        raise ServingError(missing_tftrt_message(missing))
    sparse = sparse_mode_enabled()
    logger.info(
        "[TF-TRT] Sparse compute capability is %s (TF_TRT_SPARSE_MODE=%s).",
        "enabled" if sparse else "disabled",
        os.environ.get("TF_TRT_SPARSE_MODE", "unset"),
    )
    gpu = tf.config.list_physical_devices("GPU")[0]
    details = tf.config.experimental.get_device_details(gpu)
    capability = details.get("compute_capability")
    if sparse and capability is not None and tuple(capability) < (8, 0):
        logger.warning(
            "%s has compute capability %d.%d; sparse Tensor Cores need 8.0 "
            "(Ampere) or newer, so TensorRT will run every kernel densely.",
            details.get("device_name", gpu.name),
            *capability,
        )
    if sparse and precision == "FP32":
        logger.warning(
            "TensorRT picks sparse kernels at FP16 or INT8 precision; with "
            "--precision FP32 expect no sparse speed-up."
        )


def convert_with_tftrt(saved_model_dir, output_dir, precision, inputs):
    """Converts `saved_model_dir` with TF-TRT, builds its engines, saves it.

    INT8 is calibrated on `inputs` (generated data: calibrate on real data
    for a model you serve). Engines are built for `inputs`' shapes.
    """
    import tensorflow as tf

    try:
        converter = tf.experimental.tensorrt.Converter(
            input_saved_model_dir=saved_model_dir,
            input_saved_model_signature_key=SIGNATURE,
            precision_mode=precision,
            use_calibration=precision == "INT8",
        )
    except RuntimeError as error:  # TensorRT libraries absent or too old
        raise ServingError(
            f"TensorFlow could not load TensorRT ({error}); run "
            f"tftrt_infer.py in NVIDIA's TensorFlow container ({CONTAINER})."
        ) from error

    def input_fn():
        yield inputs

    converter.convert(calibration_input_fn=input_fn if precision == "INT8" else None)
    converter.build(input_fn=input_fn)
    converter.save(output_dir)
    print(f"Saved the TF-TRT {precision} model to {output_dir}")


def serving_function(saved_model):
    """The SavedModel's `serving_default` signature."""
    if SIGNATURE not in saved_model.signatures:
        raise ServingError(
            f"The SavedModel has no '{SIGNATURE}' signature to serve; export "
            "it with `model.export(path)`."
        )
    return saved_model.signatures[SIGNATURE]


def main(argv=None):
    args = parse_args(argv)
    if args.use_native_tensorflow:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TF-TRT mode keeps TensorFlow's C++ INFO log: TF-TRT and TensorRT report
    # there which layers run sparse.

    import tensorflow as tf

    import tf_asp

    tf_asp.set_verbosity(args.verbosity)
    try:
        report_structure(args.saved_model_dir)
        if args.use_tftrt_model:
            check_tftrt(args.precision)
        if not tf.saved_model.contains_saved_model(args.saved_model_dir):
            raise ServingError(
                f"{args.saved_model_dir} is not a SavedModel directory; load "
                "it with keras.models.load_model and export it with "
                "`model.export(path)`."
            )
        native = tf.saved_model.load(args.saved_model_dir)  # keep it alive
        function = serving_function(native)
        inputs = generated_inputs(function, args.batch_size)
        if args.use_native_tensorflow:
            title = "Native TensorFlow"
        else:
            convert_with_tftrt(args.saved_model_dir, args.tftrt_output_dir, args.precision, inputs)
            converted = tf.saved_model.load(args.tftrt_output_dir)
            expected, function = function(**inputs), serving_function(converted)
            print(
                "Largest |TF-TRT - native TensorFlow| output difference: "
                f"{largest_difference(function(**inputs), expected):.3g}"
            )
            sparse = "With" if sparse_mode_enabled() else "No"
            title = f"TF-TRT {args.precision} - {sparse} sparse compute"
    except (FileNotFoundError, ValueError, ServingError) as error:
        sys.exit(f"tftrt_infer.py: error: {error}")

    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(
        f"# {title} on {device}: batch {args.batch_size}, {args.warmup} "
        f"warm-up batches, {args.runs} timed runs of {args.iterations} batches"
    )
    throughputs = measure_throughput(
        function, inputs, args.batch_size, args.warmup, args.iterations, args.runs
    )
    for run, throughput in enumerate(throughputs, 1):
        print(f"  run {run}: {throughput:.1f} samples/sec")
    print(
        f"  Average throughput: {statistics.median(throughputs):.1f} "
        f"samples/sec (median of {args.runs} runs)"
    )


if __name__ == "__main__":
    main()
