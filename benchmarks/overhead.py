"""Step-time overhead of AspOptimizerWrapperV2 over the bare optimizer.

Trains the same ResNet-style convnet on 32x32 inputs with `model.fit`, once
with a bare SGD-with-momentum optimizer and once wrapped, and prints the
median step time of each and their ratio. The first epoch (tracing and
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


def resnet_style_convnet(width=64, blocks=3):
    """Conv-BN-ReLU stem, then residual blocks of two 3x3 convolutions."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for _ in range(blocks):
        shortcut = x
        for activation in (True, False):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            if activation:
                x = keras.layers.ReLU()(x)
        x = keras.layers.ReLU()(keras.layers.Add()([x, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(16)(keras.layers.Dense(128, activation="relu")(x))
    return keras.Model(inputs, outputs)


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def median_step_time(wrapped, steps, batch_size, seed=0):
    keras.utils.set_random_seed(seed)
    model = resnet_style_convnet()
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if wrapped:
        optimizer = tf_asp.AspOptimizerWrapperV2(optimizer, model, permute=False)
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(seed)
    x = rng.random((steps * batch_size, 32, 32, 3), dtype=np.float32)
    y = rng.random((steps * batch_size, 16), dtype=np.float32)
    model.fit(x[: 2 * batch_size], y[: 2 * batch_size], batch_size=batch_size, verbose=0)
    timer = StepTimer()
    model.fit(x, y, batch_size=batch_size, verbose=0, callbacks=[timer])
    return statistics.median(timer.times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    bare = median_step_time(False, args.steps, args.batch_size)
    wrapped = median_step_time(True, args.steps, args.batch_size)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores")
    print(f"{'optimizer':<28}{'median step (ms)':>18}")
    print(f"{'SGD(momentum=0.9)':<28}{bare * 1e3:>18.2f}")
    print(f"{'AspOptimizerWrapperV2(SGD)':<28}{wrapped * 1e3:>18.2f}")
    print(f"{'ratio wrapped / bare':<28}{wrapped / bare:>18.3f}")


if __name__ == "__main__":
    main()
