"""Wall time, coverage and efficacy of wrapping a model with `permute=True`.

Wraps `keras.applications` models (`weights=None`) or a transformer encoder
("Encoder": 6 blocks, width 384, 12 heads, feed-forward 1536, 128 tokens,
token and position embeddings) with `AspOptimizerWrapperV2(...,
permute=True)` on each search backend, and prints one row per (model,
backend) and, with `--per-layer`, the efficacy of every permutation group.
`--coverage` only traces and groups (no search): how many prunable layers a
permutation reaches. On a shared machine the wall time depends on what else
runs: each row also gives the process's CPU time and the load average.

    python benchmarks/permute_model.py                      # CPU and NumPy
    python benchmarks/permute_model.py --models Encoder --devices CPU --per-layer
    python benchmarks/permute_model.py --models DenseNet121 InceptionV3 --coverage
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras import ops
from machine import cpu_name

import tf_asp
from tf_asp import compat
from tf_asp import registry

layers = keras.layers


class TokenAndPositionEmbedding(layers.Layer):
    """Token embeddings plus learned position embeddings (keras_hub style)."""

    def __init__(self, vocabulary, length, width, **kwargs):
        super().__init__(**kwargs)
        self.tokens = layers.Embedding(vocabulary, width, name="tokens")
        self.length, self.width = length, width

    def build(self, input_shape):
        self.tokens.build(input_shape)
        self.positions = self.add_weight(shape=(self.length, self.width), name="positions")

    def call(self, ids):
        x = self.tokens(ids)
        positions = ops.slice(self.positions, (0, 0), (ops.shape(x)[1], self.width))
        return x + ops.broadcast_to(positions, ops.shape(x))


def transformer_encoder(
    blocks=6, width=384, heads=12, ffn=1536, length=128, vocabulary=8192, classes=16
):
    """A BERT-style post-norm encoder classifying a sequence of token ids."""
    ids = keras.Input((length,), dtype="int32")
    h = TokenAndPositionEmbedding(vocabulary, length, width, name="embedding")(ids)
    for index in range(blocks):
        attention = layers.MultiHeadAttention(heads, width // heads, name=f"attention_{index}")
        h = layers.LayerNormalization(name=f"norm_{index}_1")(layers.Add()([h, attention(h, h)]))
        f = layers.Dense(ffn, activation="gelu", name=f"ffn_{index}_in")(h)
        f = layers.Dense(width, name=f"ffn_{index}_out")(f)
        h = layers.LayerNormalization(name=f"norm_{index}_2")(layers.Add()([h, f]))
    outputs = layers.Dense(classes, name="classifier")(layers.GlobalAveragePooling1D()(h))
    return keras.Model(ids, outputs, name="encoder")


def build(name):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    if name == "Encoder":
        return transformer_encoder()
    return getattr(keras.applications, name)(weights=None)


def randomize_normalization(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in compat.flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0.0, 0.3, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
        if isinstance(layer, keras.layers.LayerNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.normal(0.0, 0.3, layer.beta.shape))


def gemm_weights(model):
    """(weights in prunable GEMM kernels, weights in all GEMM kernels)."""
    pruned = total = 0
    for gemm in registry.gemm_layers(model):
        prunable = {id(k.variable) for k in gemm.prunable_kernels()}
        for kernel in gemm.kernels:
            size = int(np.prod(kernel.shape))
            total += size
            pruned += size if id(kernel.variable) in prunable else 0
    return pruned, total


def prunable_layers(model):
    return [g for g in registry.gemm_layers(model) if g.prunable_kernels()]


def coverage(name):
    """Prunable layers a permutation reaches (C-permuted), without searching."""
    from tf_asp.graph.groups import find_groups
    from tf_asp.graph.trace import trace_model

    model = build(name)
    start = time.perf_counter()
    groups, _ = find_groups(trace_model(model))
    wall = time.perf_counter() - start
    reached = {id(k.layer) for g in groups if g.skip_reason is None for k in g.prunable_consumers}
    active = [g for g in groups if g.skip_reason is None]
    segments = max((len(getattr(g, "segments", ())) for g in active), default=1)
    print(
        f"{name:<12} {len(reached):4d}/{len(prunable_layers(model)):<5d} C-permuted, "
        f"{len(active)} groups (most segments: {segments}), "
        f"{len(groups) - len(active)} skipped, graph {wall:.1f} s",
        flush=True,
    )


def run(name, device, time_limit):
    model = build(name)
    randomize_normalization(model)
    start, cpu = time.perf_counter(), time.process_time()
    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.SGD(0.01),
        model,
        search_device=device,
        search_time_limit=time_limit,
    )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return optimizer.permutation_summary, wall, cpu, model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet50", "MobileNetV2", "Encoder"])
    parser.add_argument("--devices", nargs="+", default=["CPU", "numpy"])
    parser.add_argument(
        "--time-limit", type=float, default=60.0, help="search_time_limit per group, seconds"
    )
    parser.add_argument(
        "--per-layer", action="store_true", help="print every group's layers and efficacy"
    )
    parser.add_argument(
        "--coverage", action="store_true", help="only count the layers permutation reaches"
    )
    args = parser.parse_args()

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()}")
    if args.coverage:
        for name in args.models:
            coverage(name)
        return
    header = (
        f"{'model':<12} {'backend':<8} {'wall s':>7} {'CPU s':>7} {'load':>4} {'search s':>8} "
        f"{'groups':>6} {'C-perm':>10} {'GEMM pruned':>11} {'efficacy mean/min/max':>22} "
        f"{'kept gain':>9} {'verify err':>10}"
    )
    print(header)
    for name in args.models:
        for device in args.devices:
            load = os.getloadavg()[0]
            summary, wall, cpu, model = run(name, device, args.time_limit)
            efficacy = [g.efficacy for g in summary.groups] or [0.0]
            search = sum(g.duration for g in summary.groups)
            kept = sum(g.magnitude for g in summary.groups)
            identity = sum(g.identity_magnitude for g in summary.groups)
            backends = sorted({g.backend for g in summary.groups}) or ["-"]
            pruned, total = gemm_weights(model)
            print(
                f"{name:<12} {'/'.join(backends):<8} {wall:7.1f} {cpu:7.1f} "
                f"{(load + os.getloadavg()[0]) / 2:4.1f} {search:8.1f} "
                f"{len(summary.groups):6d} {len(summary.c_permuted):4d}/"
                f"{len(prunable_layers(model)):<5d} {100 * pruned / total:10.1f}% "
                f"{np.mean(efficacy):8.1f} /{min(efficacy):5.1f} /{max(efficacy):5.1f} "
                f"{100 * (kept - identity) / max(identity, 1e-12):8.2f}% "
                f"{summary.error:10.1e}",
                flush=True,
            )
            if args.per_layer:
                for group in summary.groups:
                    print(f"    {group.efficacy:5.1f}%  {group.duration:6.2f} s  {group}")
                for skipped in summary.skipped:
                    print(f"    {skipped}")


if __name__ == "__main__":
    main()
