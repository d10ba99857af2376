"""MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1: the
example fine-tunes both to the same 2:4 weights, bit for bit, and its saved
model continues on one device; workers that would disagree are refused.
"""

import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO
from helpers import regression_data
from helpers import run_workers
from helpers import small_convnet

import tf_asp
from tf_asp.distribute import replica_digests

pytestmark = pytest.mark.usefixtures("fresh_keras")

TIMEOUT = 300  # seconds, for work that takes 15-45 s on 2 shared cores
REPORT = re.compile(
    r"worker (\d) of 2: (\d+) of (\d+) GEMM layers 2:4 \((\d+) prunable\); weights and "
    r"masks sha256 ([0-9a-f]{16}); identical on all 2 replicas: (\w+)"
)


def run_example(*args):
    """Runs examples/distributed_finetune.py as a user would; its whole process
    group (the launcher and its workers) is killed on timeout."""
    command = [sys.executable, "examples/distributed_finetune.py", *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return process.returncode, output


@pytest.mark.slow  # three processes start TensorFlow: 20-45 s on 2 shared cores
def test_the_example_fine_tunes_two_workers_to_the_same_2to4_bits(tmp_path):
    returncode, output = run_example("--local_workers", 2, "--steps", 4, "--output_dir", tmp_path)
    assert returncode == 0, output
    reports = sorted(REPORT.findall(output))
    assert [r[0] for r in reports] == ["0", "1"], output
    for _, pruned, _, prunable, _, identical in reports:
        assert pruned == prunable == "3"
        assert identical == "yes"
    assert reports[0][4] == reports[1][4]  # the same weights and masks, bit for bit

    # What the first worker saved is those bits, and fine-tunes on one device.
    assert tf_asp.AspOptimizerWrapperV2  # registered with Keras once imported
    model = keras.models.load_model(tmp_path / "model.keras")
    masks = model.optimizer.masks
    saved = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.weights + masks))
    assert saved.hexdigest()[:16] == reports[0][4]
    before = [m.numpy() for m in masks]
    images, _ = regression_data(model, samples=32)
    labels = np.random.default_rng(0).integers(0, 16, size=32)  # compiled with a class loss
    model.fit(images, labels, batch_size=16, verbose=0)
    assert int(model.optimizer.iterations) == 4 + 2
    for mask, old in zip(masks, before):
        np.testing.assert_array_equal(mask.numpy(), old)
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (3, 4)


def disagreeing_worker(directory):
    """One worker's side of the refusals (and one agreement); writes what
    happened to `worker<index>.json` in `directory`."""
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    index = strategy.cluster_resolver.task_id
    result = {}

    def wrap(model, **options):
        with strategy.scope():
            optimizer = keras.optimizers.SGD(0.05)
        before = [v.numpy() for v in model.weights]
        try:
            with strategy.scope():
                tf_asp.AspOptimizerWrapperV2(optimizer, model, **options)
            return None, None
        except ValueError as error:
            unchanged = all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.weights))
            return str(error), unchanged

    with strategy.scope():
        model = small_convnet()  # worker 0's initial values, copied to every worker
    kernel = model.get_layer("dense_1").kernel
    original = kernel.numpy()
    kernel.assign(original + index)  # as if each loaded its own weights
    result["different weights"] = wrap(model)

    kernel.assign(original)
    devices = ["CPU", "numpy"]  # each worker its own search backend
    result["different search backends"] = wrap(model, search_device=devices[index])
    result["digests"] = replica_digests(model.trainable_variables)

    with strategy.scope():
        model = small_convnet()
    result["permute on one worker only"] = wrap(model, permute=index == 0)
    pathlib.Path(directory, f"worker{index}.json").write_text(json.dumps(result))


def test_workers_that_would_disagree_are_refused_and_backends_agree(tmp_path):
    run_workers(disagreeing_worker, str(tmp_path), count=2, timeout=TIMEOUT)
    results = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    for result in results:
        error, unchanged = result["different weights"]
        assert "The workers hold different weights" in error
        assert "load pretrained weights before wrapping" in error
        assert unchanged
        assert result["different search backends"] == [None, None]
        assert len(set(result["digests"])) == 1
        error, _ = result["permute on one worker only"]
        assert "permuted model 'small_convnet' differently" in error
    assert results[0]["digests"] == results[1]["digests"]
