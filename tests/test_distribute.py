"""The wrapper under tf.distribute strategies in one process: it permutes and
trains as without a strategy, and refuses what it does not support (a
strategy without mirrored variables, a model or optimizer from another scope)
with an error that says what is supported, leaving the model untouched.

Two replicas: tests/test_mirrored_strategy.py; several workers:
tests/test_multi_worker.py.
"""

import contextlib
import hashlib
import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import free_port
from helpers import randomize_normalization
from helpers import regression_data
from helpers import run_in_child
from helpers import small_convnet

import tf_asp
from tf_asp.distribute import replica_digests

pytestmark = pytest.mark.usefixtures("fresh_keras")

STRATEGIES = {
    "default": tf.distribute.get_strategy,
    "one_device": lambda: tf.distribute.OneDeviceStrategy("/cpu:0"),
    "mirrored": lambda: tf.distribute.MirroredStrategy(["/cpu:0"]),
}
SUPPORTED = "supports the default strategy, OneDeviceStrategy, MirroredStrategy"


def sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def weights(model):
    return [v.numpy() for v in model.weights]


def pretrained_convnet(strategy):
    """small_convnet, created in `strategy`'s scope, with the same weights
    whatever the strategy (seeded, normalization randomized)."""
    keras.utils.set_random_seed(11)
    with strategy.scope():
        model = small_convnet()
    randomize_normalization(model)
    return model


def test_every_single_process_strategy_permutes_to_the_same_bits():
    permuted = {}
    for name, make in STRATEGIES.items():
        strategy = make()
        model = pretrained_convnet(strategy)
        with strategy.scope():
            optimizer = tf_asp.AspOptimizerWrapperV2(sgd(), model, search_device="CPU")
        assert len(optimizer.permutation_summary.groups) == 3, name
        permuted[name] = weights(model)
    for name in ("one_device", "mirrored"):
        for expected, actual in zip(permuted["default"], permuted[name], strict=True):
            np.testing.assert_array_equal(actual, expected, err_msg=name)


@pytest.mark.parametrize("strategy", ["one_device", "mirrored"])
def test_fit_with_jit_compile_on_one_replica(strategy):
    # XLA cannot compile a step across two CPU devices, nor CPU collectives,
    # even for a bare optimizer; one replica per process it can.
    strategy = STRATEGIES[strategy]()
    model = pretrained_convnet(strategy)
    with strategy.scope():
        optimizer = tf_asp.AspOptimizerWrapperV2(sgd(), model, search_device="CPU")
        model.compile(optimizer=optimizer, loss="mse", jit_compile=True)
    model.fit(*regression_data(model, samples=32), batch_size=16, epochs=2, verbose=0)
    assert model.jit_compile
    assert int(optimizer.iterations.numpy()) == 4
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (4, 4)


def test_replica_digests_hash_each_replicas_copy_in_order():
    model = small_convnet()
    expected = hashlib.sha256(b"".join(w.tobytes() for w in weights(model))).hexdigest()
    assert replica_digests(model.weights) == [expected]
    with STRATEGIES["mirrored"]().scope():
        mirrored = small_convnet()
    mirrored.set_weights(weights(model))
    assert replica_digests(mirrored.weights) == [expected]
    mirrored.weights[0].assign(mirrored.weights[0] + 1.0)
    assert replica_digests(mirrored.weights) != [expected]


# Bad input ------------------------------------------------------------------


def assert_refused(model, optimizer, match, strategy=None):
    """Wrapping in `strategy`'s scope (None: no scope) raises, changing nothing."""
    before = weights(model)
    with pytest.raises(ValueError, match=match) as error:
        with strategy.scope() if strategy else contextlib.nullcontext():
            tf_asp.AspOptimizerWrapperV2(optimizer, model)
    assert "Nothing was changed" in str(error.value)
    for old, new in zip(before, weights(model), strict=True):
        np.testing.assert_array_equal(old, new)
    return str(error.value)


def test_wrapping_outside_the_scope_the_model_was_created_in_is_refused():
    strategy = STRATEGIES["mirrored"]()
    model = pretrained_convnet(strategy)
    with strategy.scope():
        optimizer = sgd()
    message = assert_refused(model, optimizer, "created in the scope of a MirroredStrategy")
    assert "being built in no strategy scope" in message
    assert "inside the same `with strategy.scope():`" in message
    with strategy.scope():  # as the message says; the refused optimizer is still free
        tf_asp.AspOptimizerWrapperV2(optimizer, model, search_device="CPU")


def test_a_model_created_outside_the_strategy_scope_is_refused():
    strategy = STRATEGIES["mirrored"]()
    model = pretrained_convnet(tf.distribute.get_strategy())
    with strategy.scope():
        optimizer = sgd()
    assert_refused(model, optimizer, "created outside strategy.scope()", strategy)


def test_a_model_from_another_strategy_is_refused():
    model = pretrained_convnet(STRATEGIES["mirrored"]())
    other = STRATEGIES["mirrored"]()
    with other.scope():
        optimizer = sgd()
    assert_refused(model, optimizer, "scope of another MirroredStrategy", other)


def test_an_optimizer_created_outside_the_scope_is_refused():
    strategy = STRATEGIES["mirrored"]()
    model = pretrained_convnet(strategy)
    optimizer = sgd()
    assert_refused(model, optimizer, f"Optimizer '{optimizer.name}' was created outside", strategy)


def test_a_variable_that_is_not_mirrored_is_refused():
    class Counter(keras.layers.Layer):
        """Counts calls per replica: one value per replica, summed when read."""

        def __init__(self):
            super().__init__()
            self.count = keras.Variable(
                0.0, trainable=False, synchronization="on_read", aggregation="sum"
            )

        def call(self, x):
            self.count.assign_add(1.0)
            return x

    strategy = STRATEGIES["mirrored"]()
    with strategy.scope():
        model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(16), Counter()])
        optimizer = sgd()
    message = assert_refused(model, optimizer, r"is not mirrored \(SyncOnReadVariable\)", strategy)
    assert SUPPORTED in message


def under_unsupported_strategies(directory):
    """In a child with two CPU devices: wrap models of CentralStorageStrategy
    and ParameterServerStrategy; write what happened to `result.json`."""
    ports = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    cluster = tf.train.ClusterSpec({"worker": [ports[0]], "ps": [ports[1]], "chief": [ports[2]]})
    servers = [  # an in-process cluster, kept alive while the strategy runs
        tf.distribute.Server(cluster, job_name=job, task_index=0, protocol="grpc")
        for job in ("worker", "ps")
    ]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster, rpc_layer="grpc", task_type="chief", task_id=0
    )
    strategies = {
        "central_storage": tf.distribute.experimental.CentralStorageStrategy(["/cpu:0", "/cpu:1"]),
        "parameter_server": tf.distribute.ParameterServerStrategy(resolver),
    }
    results = {}
    for name, strategy in strategies.items():
        for inside in (True, False):
            with strategy.scope():
                model = small_convnet()
                optimizer = sgd()
            before, error = weights(model), None
            try:
                with strategy.scope() if inside else contextlib.nullcontext():
                    tf_asp.AspOptimizerWrapperV2(optimizer, model)
            except ValueError as raised:
                error = str(raised)
            untouched = all(np.array_equal(a, b) for a, b in zip(before, weights(model)))
            results[f"{name}, wrapped {'inside' if inside else 'outside'}"] = [error, untouched]
    pathlib.Path(directory, "result.json").write_text(json.dumps(results))
    del servers


def test_strategies_without_mirrored_variables_are_refused(tmp_path):
    run_in_child(under_unsupported_strategies, str(tmp_path), cpu_devices=2)
    results = json.loads((tmp_path / "result.json").read_text())
    assert len(results) == 4
    for case, (error, untouched) in results.items():
        assert error is not None, case
        assert SUPPORTED in error, case
        assert untouched, case
    assert (
        "built in the scope of a CentralStorageStrategy"
        in results["central_storage, wrapped inside"][0]
    )
    assert "ParameterServerStrategy" in results["parameter_server, wrapped inside"][0]
    assert "(CachingVariable)" in results["parameter_server, wrapped outside"][0]
    assert (
        "conv_1/kernel of model 'small_convnet' is not mirrored (AggregatingVariable)"
        in results["central_storage, wrapped outside"][0]
    )
