"""Fine-tune a model to 2:4 sparsity on several workers (MultiWorkerMirroredStrategy).

Each worker is one process (one machine), told the cluster and its own index by
`TF_CONFIG`, as TensorFlow's multi-worker training expects. On two machines:

    # on host0 (and the same on host1 with "index": 1)
    export TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                       "task": {"type": "worker", "index": 0}}'
    python examples/distributed_finetune.py --output_dir /shared/pruned

On one machine, with the workers on loopback (this script starts them):

    python examples/distributed_finetune.py --local_workers 2

Every worker creates the model inside `strategy.scope()`, loads the same
weights (`--weights`, before wrapping), and wraps its optimizer: tf_asp finds
the same channel permutations on every worker, with no broadcast, and checks
that it did. Training is a custom loop (`strategy.run` with
`optimizer.apply_gradients`), because Keras 3's `model.fit` does not run under
MultiWorkerMirroredStrategy (keras-team/keras#20585). At the end each worker
prints whether its kernels are 2:4 and the SHA-256 of its weights and masks,
and whether every replica holds the same; the first worker saves the model.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import tf_asp
from tf_asp.distribute import replica_digests

INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 16
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


def build_model():
    """A small convnet. Its BatchNormalization is synchronized, so the moving
    statistics (not only the trained weights) are the same on every replica."""
    inputs = keras.Input(INPUT_SHAPE)
    x = inputs
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(synchronized=True)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(NUM_CLASSES)(x)
    return keras.Model(inputs, outputs, name="convnet")


def dataset(samples, seed=0):
    """Random images labelled by their brightest row; the same on every worker
    (the strategy gives each worker its share of every batch)."""
    rng = np.random.default_rng(seed)
    images = rng.random((samples,) + INPUT_SHAPE, dtype=np.float32)
    labels = images.mean(axis=(2, 3)).argmax(axis=-1)  # 16 rows, 16 classes
    return tf.data.Dataset.from_tensor_slices((images, labels))


def fine_tune(steps, batch_size, weights=None, output_dir=None):
    """One worker's work; every worker of the cluster runs it."""
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    resolver = strategy.cluster_resolver
    worker, workers = resolver.task_id, resolver.cluster_spec().num_tasks("worker")
    with strategy.scope():
        model = build_model()
        if weights:
            model.load_weights(weights)  # before wrapping, the same file everywhere
        optimizer = tf_asp.AspOptimizerWrapperV2(
            keras.optimizers.SGD(learning_rate=0.05, momentum=0.9), model
        )
        optimizer.build(model.trainable_variables)  # before a custom loop
        # Not for fit: so that model.keras keeps the optimizer and its masks.
        model.compile(optimizer=optimizer, loss=LOSS)
    global_batch = batch_size * strategy.num_replicas_in_sync
    data = dataset(steps * global_batch).repeat().batch(global_batch)
    iterator = iter(strategy.experimental_distribute_dataset(data))

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            losses = LOSS(labels, model(images, training=True))
            loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        losses = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce("SUM", losses, axis=None)

    for _ in range(steps):
        loss = float(train_step(iterator))
    report(f"worker {worker}: {steps} steps, last loss {loss:.4f}")

    pruned, total = tf_asp.check_pruned_layers(model, check_structured=True)
    digests = replica_digests(model.weights + optimizer.masks)  # every worker calls it
    mine = digests[worker * len(strategy.extended.worker_devices)]
    identical = "yes" if len(set(digests)) == 1 else "NO"
    report(
        f"worker {worker} of {workers}: {pruned} of {total} GEMM layers 2:4 "
        f"({len(optimizer.masks)} prunable); weights and masks sha256 {mine[:16]}; "
        f"identical on all {len(digests)} replicas: {identical}"
    )
    if output_dir and worker == 0:
        os.makedirs(output_dir, exist_ok=True)
        model.save(os.path.join(output_dir, "model.keras"))
        report(f"worker 0 saved {os.path.join(output_dir, 'model.keras')}")
    return pruned == len(optimizer.masks) and identical == "yes"


def report(line):
    """Prints `line` in one write, so that workers sharing a terminal do not
    interleave their lines."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def launch_local_workers(count, arguments, timeout):
    """Runs this script with `arguments` as `count` workers on 127.0.0.1; True
    if all succeed. Stops them all when one fails or `timeout` seconds pass."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(count)]}
    workers = []
    try:
        for index in range(count):
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            env = dict(os.environ, TF_CONFIG=json.dumps(config))
            workers.append(subprocess.Popen([sys.executable, __file__, *arguments], env=env))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [worker.poll() for worker in workers]
            if None not in codes or any(codes):  # all ended, or one failed
                return codes == [0] * count
            time.sleep(0.5)
        return False
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=16, help="per replica")
    parser.add_argument("--weights", default=None, help="a .weights.h5 file to start from")
    parser.add_argument("--output_dir", default=None, help="where worker 0 saves model.keras")
    parser.add_argument("--local_workers", type=int, default=0, help="start N workers here")
    parser.add_argument("--timeout", type=float, default=600, help="seconds (local workers)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch_size must be positive")
    if args.local_workers:
        arguments = ["--steps", str(args.steps), "--batch_size", str(args.batch_size)]
        for option in ("weights", "output_dir"):
            if getattr(args, option):
                arguments += [f"--{option}", getattr(args, option)]
        ok = launch_local_workers(args.local_workers, arguments, args.timeout)
    elif "TF_CONFIG" in os.environ:
        ok = fine_tune(args.steps, args.batch_size, args.weights, args.output_dir)
    else:
        parser.error("set TF_CONFIG for this worker, or pass --local_workers N")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
