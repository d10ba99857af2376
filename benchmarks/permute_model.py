"""Wall time and per-layer efficacy of wrapping a model with `permute=True`.

Wraps `keras.applications` ResNet50 and MobileNetV2 (`weights=None`) with
`AspOptimizerWrapperV2(..., permute=True)` on each search backend, and prints
one row per (model, backend) and, with `--per-layer`, the efficacy of every
permutation group.

    python benchmarks/permute_model.py                      # CPU and NumPy
    python benchmarks/permute_model.py --models ResNet50 --devices CPU --per-layer
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from machine import cpu_name

import tf_asp
from tf_asp import compat
from tf_asp import registry


def randomize_batch_norms(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in compat.flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0.0, 0.3, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))


def run(name, device, time_limit):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None)
    randomize_batch_norms(model)
    prunable = [g for g in registry.gemm_layers(model) if g.prunable_kernels()]
    start = time.perf_counter()
    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.SGD(0.01),
        model,
        search_device=device,
        search_time_limit=time_limit,
    )
    wall = time.perf_counter() - start
    return optimizer.permutation_summary, wall, len(prunable)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet50", "MobileNetV2"])
    parser.add_argument("--devices", nargs="+", default=["CPU", "numpy"])
    parser.add_argument(
        "--time-limit", type=float, default=60.0, help="search_time_limit per group, seconds"
    )
    parser.add_argument(
        "--per-layer", action="store_true", help="print every group's layers and efficacy"
    )
    args = parser.parse_args()

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()}")
    header = (
        f"{'model':<12} {'backend':<8} {'wall s':>7} {'search s':>8} "
        f"{'groups':>6} {'C-perm':>10} {'efficacy mean/min/max':>22} "
        f"{'kept gain':>9} {'verify err':>10}"
    )
    print(header)
    for name in args.models:
        for device in args.devices:
            summary, wall, prunable = run(name, device, args.time_limit)
            efficacy = [g.efficacy for g in summary.groups] or [0.0]
            search = sum(g.duration for g in summary.groups)
            kept = sum(g.magnitude for g in summary.groups)
            identity = sum(g.identity_magnitude for g in summary.groups)
            backends = sorted({g.backend for g in summary.groups}) or ["-"]
            print(
                f"{name:<12} {'/'.join(backends):<8} {wall:7.1f} {search:8.1f} "
                f"{len(summary.groups):6d} {len(summary.c_permuted):4d}/{prunable:<5d} "
                f"{np.mean(efficacy):8.1f} /{min(efficacy):5.1f} /{max(efficacy):5.1f} "
                f"{100 * (kept - identity) / max(identity, 1e-12):8.2f}% "
                f"{summary.error:10.1e}",
                flush=True,
            )
            if args.per_layer:
                for group in summary.groups:
                    print(
                        f"    {group.efficacy:5.1f}%  {group.duration:6.2f} s  "
                        f"C={group.channels:<5d} {', '.join(group.consumers)}"
                    )


if __name__ == "__main__":
    main()
