"""Serve the pruned model with native TensorFlow, ONNX Runtime or TensorRT and time it.

    python tftrt_infer.py --use_native_tensorflow
    python tftrt_infer.py --use_onnxruntime --onnx_model model.onnx
    python tftrt_infer.py --use_tensorrt --onnx_model model.onnx --precision fp16
    TF_TRT_SPARSE_MODE=0 python tftrt_infer.py --use_tensorrt   # sparse weights off only
    python tftrt_infer.py --use_tftrt_model                     # TF-TRT, TensorFlow <= 2.17

It first checks the 2:4 structure of what it serves (`tf_asp.sparsity_report`
of the SavedModel, or of the ONNX file) and says which kernels sparse Tensor
Cores can run. Then it feeds generated batches (made from the SavedModel's
`serving_default` signature): `--warmup` untimed batches, then `--runs` timed
runs of `--iterations` batches each, and prints every run's throughput and
their median as the average throughput. The ONNX modes also print the largest
difference between their outputs and native TensorFlow's on the same batch.

`--use_onnxruntime` runs the ONNX file (`python -m tf_asp.export`) with ONNX
Runtime, on its CUDA provider when present, else the CPU. `--use_tensorrt`
builds TensorRT engines from it for the batch shape at `--precision`
(`tf_asp.serving.trt_engine`), with sparse weights and without (or only the
one `TF_TRT_SPARSE_MODE` names), prints the layers TensorRT's log says run
sparse, and times both; it needs `tensorrt`, `cuda-python` and an NVIDIA GPU.
`--use_tftrt_model` converts the SavedModel with TF-TRT, which only TensorFlow
2.17 and earlier built with TensorRT have (NVIDIA's TensorFlow container);
there it logs `[TF-TRT] Sparse compute capability is enabled` (or `disabled`
for `TF_TRT_SPARSE_MODE=0`), as NVIDIA's sparse-enabled TF-TRT does.
"""

import argparse
import logging
import os
import statistics
import sys
from typing import NamedTuple

from tf_asp.serving.throughput import largest_difference
from tf_asp.serving.throughput import measure_throughput
from tf_asp.serving.throughput import wait_for_outputs

PRECISIONS = ("FP32", "FP16", "INT8")
CONTAINER = "nvcr.io/nvidia/tensorflow:<yy.mm>-tf2-py3"
SIGNATURE = "serving_default"

logger = logging.getLogger("tf_asp")


class ServingError(RuntimeError):
    """The model cannot be served as asked; the message says what to do."""


class Benchmark(NamedTuple):
    """A serving function to time: `function(**inputs)`, then `wait(outputs)`."""

    title: str
    device: str
    function: object
    inputs: dict
    wait: object = wait_for_outputs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="tftrt_infer.py", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--use_native_tensorflow",
        action="store_true",
        help="serve the SavedModel with TensorFlow itself",
    )
    mode.add_argument(
        "--use_onnxruntime",
        action="store_true",
        help="serve the ONNX file with ONNX Runtime (CUDA provider when present, else CPU)",
    )
    mode.add_argument(
        "--use_tensorrt",
        action="store_true",
        help="build TensorRT engines from the ONNX file, sparse weights on and off",
    )
    mode.add_argument(
        "--use_tftrt_model",
        action="store_true",
        help="convert it with TF-TRT and serve the TensorRT engines (TensorFlow <= 2.17)",
    )
    parser.add_argument("--saved_model_dir", default="./exported_model")
    parser.add_argument(
        "--onnx_model",
        default="./exported_model.onnx",
        help="the ONNX file of --use_onnxruntime and --use_tensorrt (python -m tf_asp.export)",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches before timing")
    parser.add_argument("--iterations", type=int, default=100, help="batches per timed run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument(
        "--precision",
        type=str.upper,
        choices=PRECISIONS,
        default="FP16",
        help="TensorRT / TF-TRT precision (FP16 or INT8 for sparse Tensor Cores)",
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


def tensorrt_sparse_modes(environ=os.environ):
    """The sparse-weights settings `--use_tensorrt` builds engines for.

    Both (on, then off) unless `TF_TRT_SPARSE_MODE` is set: then only the one
    it names.
    """
    if "TF_TRT_SPARSE_MODE" not in environ:
        return (True, False)
    return (sparse_mode_enabled(environ),)


def tftrt_removed(version):
    """Whether TensorFlow `version` is 2.18 or later, which has no TF-TRT."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) >= (2, 18)


def tftrt_removed_message(version, saved_model_dir):
    """One sentence: TF-TRT is gone from this TensorFlow; what to use instead."""
    return (
        f"TF-TRT no longer exists in TensorFlow 2.18 and later (this is {version}), so "
        "--use_tftrt_model cannot run here; export the model with `python -m "
        f"tf_asp.export {saved_model_dir} --onnx model.onnx` and serve it with "
        "`--use_tensorrt --onnx_model model.onnx`."
    )


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


def report_structure(path):
    """Prints the sparsity report of a SavedModel or ONNX file and which kernels qualify."""
    from tf_asp.report import sparsity_report

    report = sparsity_report(path)
    ready = [row.name for row in report.sparse_ready]
    dense = [row.name for row in report.rows if row.shape_qualifies and not row.is_2to4]
    if ready:
        print(f"Sparse Tensor Cores can run: {', '.join(ready)}")
    else:
        logger.warning(
            "No kernel of %s is both 2:4 and of a sparse-Tensor-Core shape, so "
            "sparse compute cannot speed it up; prune it with "
            "tf_asp.AspOptimizerWrapperV2 before exporting.",
            path,
        )
    if dense:
        print(f"Shaped for sparse Tensor Cores but not 2:4: {', '.join(dense)}")
    return report


def check_tftrt(precision, saved_model_dir="./exported_model"):
    """Raises `ServingError` when TF-TRT cannot run here; logs the sparse mode."""
    import tensorflow as tf

    if tftrt_removed(tf.__version__):
        raise ServingError(tftrt_removed_message(tf.__version__, saved_model_dir))
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
    _warn_if_fp32(sparse, precision)


def _warn_if_fp32(sparse, precision):
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


def load_native(saved_model_dir, batch_size):
    """(loaded SavedModel, its serving function, a generated batch for it)."""
    import tensorflow as tf

    if not tf.saved_model.contains_saved_model(saved_model_dir):
        raise ServingError(
            f"{saved_model_dir} is not a SavedModel directory; load "
            "it with keras.models.load_model and export it with "
            "`model.export(path)`."
        )
    native = tf.saved_model.load(saved_model_dir)  # keep it alive while serving
    function = serving_function(native)
    return native, function, generated_inputs(function, batch_size)


def host_inputs(inputs, input_names):
    """The generated batch as NumPy arrays, checked against the ONNX inputs."""
    if set(input_names) != set(inputs):
        raise ServingError(
            f"The ONNX model's inputs {sorted(input_names)} are not the SavedModel's "
            f"{sorted(inputs)}; export the ONNX file from this SavedModel with "
            "`python -m tf_asp.export`."
        )
    return {name: tensor.numpy() for name, tensor in inputs.items()}


def share_gpu():
    """Lets TensorFlow take GPU memory as it needs it, not all of it up front,
    so ONNX Runtime or TensorRT has room beside it on the same GPU."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def tf_device():
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def serve_native(args):
    """Native TensorFlow: the SavedModel's `serving_default` signature."""
    report_structure(args.saved_model_dir)
    # `_native` holds the SavedModel, whose variables the signature reads.
    _native, function, inputs = load_native(args.saved_model_dir, args.batch_size)
    yield Benchmark("Native TensorFlow", tf_device(), function, inputs)


def serve_tftrt(args):
    """TF-TRT (TensorFlow <= 2.17 built with TensorRT)."""
    import tensorflow as tf

    report_structure(args.saved_model_dir)
    check_tftrt(args.precision, args.saved_model_dir)
    _native, function, inputs = load_native(args.saved_model_dir, args.batch_size)
    convert_with_tftrt(args.saved_model_dir, args.tftrt_output_dir, args.precision, inputs)
    converted = tf.saved_model.load(args.tftrt_output_dir)
    expected, function = function(**inputs), serving_function(converted)
    print(
        "Largest |TF-TRT - native TensorFlow| output difference: "
        f"{largest_difference(function(**inputs), expected):.3g}"
    )
    sparse = "With" if sparse_mode_enabled() else "No"
    yield Benchmark(f"TF-TRT {args.precision} - {sparse} sparse compute", "GPU", function, inputs)


def serve_onnxruntime(args):
    """ONNX Runtime on the ONNX file, compared with native TensorFlow."""
    from tf_asp.serving.ort_session import OnnxRuntimeSession

    share_gpu()
    report_structure(args.onnx_model)
    session = OnnxRuntimeSession(args.onnx_model)
    _native, function, inputs = load_native(args.saved_model_dir, args.batch_size)
    feeds = host_inputs(inputs, session.input_names)
    print(
        "Largest |ONNX Runtime - native TensorFlow| output difference: "
        f"{largest_difference(session(**feeds), function(**inputs)):.3g}"
    )
    yield Benchmark("ONNX Runtime", session.provider, session, feeds)


def serve_tensorrt(args):
    """TensorRT engines from the ONNX file: sparse weights on, then off."""
    from tf_asp.serving import trt_engine

    share_gpu()
    report_structure(args.onnx_model)
    missing = trt_engine.tensorrt_missing()
    if missing:
        raise ServingError(trt_engine.missing_tensorrt_message(missing))
    modes = tensorrt_sparse_modes()
    _warn_if_fp32(True in modes, args.precision)
    gpu, capability = trt_engine.gpu_capability()
    if True in modes and capability < (8, 0):
        logger.warning(
            "%s has compute capability %d.%d; sparse Tensor Cores need 8.0 (Ampere) "
            "or newer, so TensorRT will run every kernel densely.",
            gpu,
            *capability,
        )
    _native, function, inputs = load_native(args.saved_model_dir, args.batch_size)
    expected = function(**inputs)
    for sparse in modes:
        engine = trt_engine.TensorRTEngine.build(
            args.onnx_model,
            {name: tuple(tensor.shape) for name, tensor in inputs.items()},
            precision=args.precision,
            sparse=sparse,
            calibration=[{name: tensor.numpy() for name, tensor in inputs.items()}],
        )
        with engine:
            feeds = host_inputs(inputs, engine.input_names)
            if sparse:
                eligible, picked = engine.sparsity
                print(f"TensorRT found 2:4 weights in: {', '.join(eligible) or 'no layer'}")
                print(f"TensorRT chose sparse kernels for: {', '.join(picked) or 'no layer'}")
            engine.set_inputs(feeds)
            engine.execute()
            engine.synchronize()
            print(
                f"Largest |TensorRT - native TensorFlow| output difference: "
                f"{largest_difference(engine.outputs(), expected):.3g}"
            )
            yield Benchmark(
                f"TensorRT {args.precision} - sparse weights {'on' if sparse else 'off'}",
                "GPU",
                engine.execute,  # the batch is on the GPU already
                {},
                engine.synchronize,
            )


MODES = {
    "use_native_tensorflow": serve_native,
    "use_tftrt_model": serve_tftrt,
    "use_onnxruntime": serve_onnxruntime,
    "use_tensorrt": serve_tensorrt,
}


def time_benchmark(benchmark, args):
    """Times `benchmark`, prints every run and the median; returns the median."""
    print(
        f"# {benchmark.title} on {benchmark.device}: batch {args.batch_size}, {args.warmup} "
        f"warm-up batches, {args.runs} timed runs of {args.iterations} batches"
    )
    throughputs = measure_throughput(
        benchmark.function,
        benchmark.inputs,
        args.batch_size,
        args.warmup,
        args.iterations,
        args.runs,
        wait=benchmark.wait,
    )
    for run, throughput in enumerate(throughputs, 1):
        print(f"  run {run}: {throughput:.1f} samples/sec")
    median = statistics.median(throughputs)
    print(f"  Average throughput: {median:.1f} samples/sec (median of {args.runs} runs)")
    return median


def main(argv=None):
    args = parse_args(argv)
    if not args.use_tftrt_model:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TF-TRT mode keeps TensorFlow's C++ INFO log: TF-TRT and TensorRT report
    # there which layers run sparse.

    import tf_asp
    from tf_asp.serving.trt_engine import TensorRTError

    tf_asp.set_verbosity(args.verbosity)
    serve = next(function for flag, function in MODES.items() if getattr(args, flag))
    medians = []
    try:
        for benchmark in serve(args):
            medians.append((benchmark.title, time_benchmark(benchmark, args)))
    except (FileNotFoundError, ValueError, ImportError, ServingError, TensorRTError) as error:
        sys.exit(f"tftrt_infer.py: error: {error}")
    if len(medians) == 2:
        (_, sparse), (_, dense) = medians
        print(
            f"Sparse weights on / off: {sparse:.1f} / {dense:.1f} samples/sec "
            f"({sparse / dense:.2f}x)"
        )


if __name__ == "__main__":
    main()
