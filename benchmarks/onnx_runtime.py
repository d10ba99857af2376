"""ONNX Runtime (CPU) against native TensorFlow: samples/sec of the demo model.

Fine-tunes and exports main.py's pruned demo convnet (or takes
`--saved_model_dir` and `--onnx_model`), exports it to ONNX with
`tf_asp.export_onnx`, and times the SavedModel's `serving_default` signature
and an ONNX Runtime session on the same generated batch at each batch size,
with tftrt_infer.py's timing (`tf_asp.serving.throughput`). The two runtimes
alternate run by run, so a busy machine slows both alike; the table holds the
medians and the largest output difference.

    python benchmarks/onnx_runtime.py --batch_sizes 1 32 128
    python benchmarks/onnx_runtime.py --threads 1   # one thread per op in both runtimes
"""

import argparse
import importlib.util
import os
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import onnxruntime
import tensorflow as tf
from machine import cpu_name

from tf_asp.export import export_onnx
from tf_asp.serving.ort_session import OnnxRuntimeSession
from tf_asp.serving.throughput import largest_difference
from tf_asp.serving.throughput import measure_throughput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_savedmodel(output_dir):
    """Runs main.py's demo (20 fine-tuning steps) and exports it to `output_dir`."""
    spec = importlib.util.spec_from_file_location("main", os.path.join(REPO, "main.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.run(steps=20, batch_size=32, output_dir=output_dir)


def compare(signature, session, batch_size, warmup, iterations, runs):
    """(TF samples/sec, ORT samples/sec, largest difference) at one batch size."""
    images = np.random.default_rng(batch_size).random((batch_size, 32, 32, 3), dtype=np.float32)
    runtimes = {
        "tf": (signature, {"image": tf.constant(images)}),
        "ort": (session, {"image": images}),
    }
    difference = largest_difference(session(image=images), signature(image=images))
    for function, inputs in runtimes.values():
        measure_throughput(function, inputs, batch_size, warmup, iterations, runs=0)
    timed = {name: [] for name in runtimes}
    for _ in range(runs):
        for name, (function, inputs) in runtimes.items():
            timed[name] += measure_throughput(function, inputs, batch_size, 0, iterations, 1)
    return statistics.median(timed["tf"]), statistics.median(timed["ort"]), difference


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--saved_model_dir", default=None, help="default: run main.py's demo")
    parser.add_argument("--onnx_model", default=None, help="default: export the SavedModel")
    parser.add_argument("--threads", type=int, default=None, help="threads per op (default: all)")
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    with tempfile.TemporaryDirectory() as scratch:
        saved_model_dir = args.saved_model_dir
        if saved_model_dir is None:
            saved_model_dir = os.path.join(scratch, "exported_model")
            demo_savedmodel(saved_model_dir)
        onnx_model = args.onnx_model or os.path.join(scratch, "model.onnx")
        if args.onnx_model is None:
            export_onnx(saved_model_dir, onnx_model)
        loaded = tf.saved_model.load(saved_model_dir)
        signature = loaded.signatures["serving_default"]
        session = OnnxRuntimeSession(onnx_model, threads=args.threads)

        print(
            f"\nmachine: {cpu_name()}, {os.cpu_count()} cores; TensorFlow {tf.__version__}, "
            f"ONNX Runtime {onnxruntime.__version__} ({session.provider}); "
            f"{args.threads or 'all'} threads per op; "
            f"median of {args.runs} alternating runs of {args.iterations} batches"
        )
        print("| batch | TensorFlow samples/s | ONNX Runtime samples/s | ORT / TF | max abs diff |")
        print("|------:|---------------------:|-----------------------:|---------:|-------------:|")
        for batch_size in args.batch_sizes:
            native, ort, difference = compare(
                signature, session, batch_size, args.warmup, args.iterations, args.runs
            )
            print(
                f"| {batch_size:>5} | {native:>20.1f} | {ort:>22.1f} | {ort / native:>8.2f} "
                f"| {difference:>12.2g} |"
            )


if __name__ == "__main__":
    main()
