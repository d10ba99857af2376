"""Step-time overhead of AspOptimizerWrapperV2 over the bare optimizer.

Trains the same ResNet-style convnet on 32x32 inputs with `model.fit`, once
with a bare SGD-with-momentum optimizer and once wrapped, and prints the
median step time of each and their ratio: with Keras 3 (`keras.optimizers.SGD`)
and with Keras 2 (tf_keras, `tf_keras.optimizers.legacy.SGD`, the original
TF-ASP usage). The first epoch (tracing and compilation) is not timed. The two
train in alternating chunks of `--chunk` steps, so that both see the same load
on a shared machine. With `--mirrored`, both train under MirroredStrategy over
two logical CPU devices (the global batch split in two; Keras 3 only).

    python benchmarks/overhead.py --steps 50 --batch_size 64
    python benchmarks/overhead.py --mirrored
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
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


def compiled_model(wrapped, batch_size, api=keras, seed=0, strategy=None):
    """The convnet compiled with bare or wrapped SGD, its first epoch (tracing
    and compilation) done."""
    api.utils.set_random_seed(seed)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = resnet_style_convnet(api=api)
        optimizer = sgd(api)
        if wrapped:
            optimizer = tf_asp.AspOptimizerWrapperV2(optimizer, model, permute=False)
        model.compile(optimizer=optimizer, loss="mse")
    model.fit(*data(2 * batch_size, seed), batch_size=batch_size, verbose=0)
    return model


def median_step_times(steps, batch_size, chunk=5, api=keras, seed=0, strategy=None):
    """Median step time of the bare and the wrapped optimizer, trained in
    alternating chunks of `chunk` steps."""
    models = [compiled_model(w, batch_size, api, seed, strategy) for w in (False, True)]
    timers = [step_timer(api), step_timer(api)]
    x, y = data(chunk * batch_size, seed)
    for _ in range(-(-steps // chunk)):
        for model, timer in zip(models, timers):
            model.fit(x, y, batch_size=batch_size, verbose=0, callbacks=[timer])
    return [statistics.median(timer.times) for timer in timers]


def data(samples, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((samples, 32, 32, 3), dtype=np.float32)
    return x, rng.random((samples, 16), dtype=np.float32)


def mirrored_strategy():
    """MirroredStrategy over two logical CPU devices (made before TensorFlow
    initialises: call it first)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=5, help="steps per alternation")
    parser.add_argument("--mirrored", action="store_true", help="MirroredStrategy, 2 CPUs")
    args = parser.parse_args()
    strategy = mirrored_strategy() if args.mirrored else None
    rows = [("SGD(momentum=0.9)", "AspOptimizerWrapperV2(SGD)", keras)]
    if not args.mirrored:
        import tf_keras

        rows.append(("tf_keras legacy SGD(0.9)", "AspOptimizerWrapperV2(legacy)", tf_keras))
    where = ", MirroredStrategy over 2 logical CPU devices" if args.mirrored else ""
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores{where}")
    print(f"{'optimizer':<32}{'median step (ms)':>18}")
    for bare_name, wrapped_name, api in rows:
        bare, wrapped = median_step_times(args.steps, args.batch_size, args.chunk, api, 0, strategy)
        print(f"{bare_name:<32}{bare * 1e3:>18.2f}")
        print(f"{wrapped_name:<32}{wrapped * 1e3:>18.2f}")
        print(f"{'ratio wrapped / bare':<32}{wrapped / bare:>18.3f}")


if __name__ == "__main__":
    main()
