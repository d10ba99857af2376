"""Step-time overhead of AspOptimizerWrapperV2 over the bare optimizer.

Trains the same ResNet-style convnet on 32x32 inputs with `model.fit`, once
with a bare SGD-with-momentum optimizer and once wrapped, and prints the
median step time of each and their ratio: with Keras 3 (`keras.optimizers.SGD`)
and with Keras 2 (tf_keras, `tf_keras.optimizers.legacy.SGD`, the original
TF-ASP usage; skipped without tf_keras). The first epoch (tracing and
compilation) is not timed.

    python benchmarks/overhead.py --steps 50 --batch_size 64
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from machine import cpu_name

import tf_asp


def resnet_style_convnet(width=64, blocks=3, api=keras):
    """Conv-BN-ReLU stem, then residual blocks of two 3x3 convolutions.

    `api` is the Keras to build it with: `keras` or `tf_keras`.
    """
    layers = api.layers
    inputs = api.Input((32, 32, 3))
    x = layers.Conv2D(width, 3, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for _ in range(blocks):
        shortcut = x
        for activation in (True, False):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            if activation:
                x = layers.ReLU()(x)
        x = layers.ReLU()(layers.Add()([x, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(16)(layers.Dense(128, activation="relu")(x))
    return api.Model(inputs, outputs)


def step_timer(api=keras):
    """A callback of `api` that records every training step's wall time."""

    class StepTimer(api.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def sgd(api=keras):
    """SGD with momentum 0.9: Keras 3's, or tf_keras' legacy one."""
    if api is keras:
        return keras.optimizers.SGD(0.01, momentum=0.9)
    return api.optimizers.legacy.SGD(0.01, momentum=0.9)


def median_step_time(wrapped, steps, batch_size, seed=0, api=keras):
    api.utils.set_random_seed(seed)
    model = resnet_style_convnet(api=api)
    optimizer = sgd(api)
    if wrapped:
        optimizer = tf_asp.AspOptimizerWrapperV2(optimizer, model, permute=False)
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(seed)
    x = rng.random((steps * batch_size, 32, 32, 3), dtype=np.float32)
    y = rng.random((steps * batch_size, 16), dtype=np.float32)
    model.fit(x[: 2 * batch_size], y[: 2 * batch_size], batch_size=batch_size, verbose=0)
    timer = step_timer(api)
    model.fit(x, y, batch_size=batch_size, verbose=0, callbacks=[timer])
    return statistics.median(timer.times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    rows = [("SGD(momentum=0.9)", "AspOptimizerWrapperV2(SGD)", keras)]
    try:
        import tf_keras

        rows.append(("tf_keras legacy SGD(0.9)", "AspOptimizerWrapperV2(legacy)", tf_keras))
    except ImportError:
        print("tf_keras is not installed: no Keras 2 row")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores")
    print(f"{'optimizer':<32}{'median step (ms)':>18}")
    for bare_name, wrapped_name, api in rows:
        bare = median_step_time(False, args.steps, args.batch_size, api=api)
        wrapped = median_step_time(True, args.steps, args.batch_size, api=api)
        print(f"{bare_name:<32}{bare * 1e3:>18.2f}")
        print(f"{wrapped_name:<32}{wrapped * 1e3:>18.2f}")
        print(f"{'ratio wrapped / bare':<32}{wrapped / bare:>18.3f}")


if __name__ == "__main__":
    main()
