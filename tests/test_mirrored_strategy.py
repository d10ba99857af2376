"""Under MirroredStrategy over two replicas, the wrapper permutes and prunes
exactly as on one device, keeps the replicas identical bit for bit, and its
checkpoints move between two replicas and one device.

The two-replica side runs once, in a child process whose TensorFlow sees two
logical CPU devices (`on_two_replicas`); it saves every replica's copy of
the variables it is asked about. The one-device side runs here.
"""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import prunable_kernels
from helpers import randomize_normalization
from helpers import regression_data
from helpers import run_in_child
from helpers import small_convnet

import tf_asp
from tf_asp import masks

pytestmark = pytest.mark.usefixtures("fresh_keras")

STEPS = 3


def wrap(model, **kwargs):
    return tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.05, momentum=0.9), model, **kwargs)


def custom_loop(model, optimizer, steps, strategy=None):
    """`steps` updates through `strategy.run` and `apply_gradients`."""
    strategy = strategy or tf.distribute.get_strategy()
    x, y = regression_data(model, samples=32)
    batches = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16)
    )

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum((model(x, training=True) - y) ** 2) / 16.0
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    step = tf.function(lambda batch: strategy.run(replica_step, args=batch))
    iterator = iter(batches)
    for _ in range(steps):
        step(next(iterator))


def state(model, optimizer=None):
    """name -> variable: the model's weights and, with `optimizer`, each
    pruned kernel's mask (named `<kernel path>:mask`) and `iterations`."""
    named = {v.path: v for v in model.weights}
    if optimizer is not None:
        kernels = [k.variable for k in prunable_kernels(model)]
        named.update({f"{k.path}:mask": m for k, m in zip(kernels, optimizer.masks, strict=True)})
        named["iterations"] = optimizer.iterations
    return named


def replicas(named):
    """name -> every replica's value, stacked (one device: a stack of one)."""
    values = {}
    for name, variable in named.items():
        value = variable.value
        components = value.values if isinstance(value, tf.distribute.DistributedValues) else [value]
        values[name] = np.stack([c.numpy() for c in components])
    return values


def save(path, named):
    np.savez(path, **{name.replace("/", "|"): v for name, v in replicas(named).items()})


def load(path):
    with np.load(path) as saved:
        return {name.replace("|", "/"): saved[name] for name in saved.files}


def mask_names(values):
    return [name for name in values if name.endswith(":mask")]


# The two-replica side (a child process) ---------------------------------


def on_two_replicas(directory):
    """Everything the tests ask of two replicas, saved under `directory`."""
    directory = pathlib.Path(directory)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    # Permute the pretrained weights (NumPy search) and fine-tune with fit.
    with strategy.scope():
        model = small_convnet()
        model.load_weights(directory / "pretrained.weights.h5")
        optimizer = wrap(model, search_device="numpy")
        save(directory / "permuted.npz", state(model))
        model.compile(optimizer=optimizer, loss="mse")
    x, y = regression_data(model, samples=64)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    save(directory / "fit.npz", state(model, optimizer))
    tf.train.Checkpoint(model=model, optimizer=optimizer).write(str(directory / "two/ckpt"))
    model.save(directory / "two.keras")

    # Restore the one-device checkpoint and continue with a custom loop.
    with strategy.scope():
        model = small_convnet()
        optimizer = wrap(model, permute=False)
        optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    checkpoint.read(str(directory / "one/ckpt")).assert_consumed()
    save(directory / "restored.npz", state(model, optimizer))
    custom_loop(model, optimizer, STEPS, strategy)
    save(directory / "continued.npz", state(model, optimizer))


# The one-device side, and the comparisons --------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-device run's values (pretrained, permuted, after fine-tuning)
    and the directory the two-replica run saved into."""
    directory = tmp_path_factory.mktemp("mirrored")
    keras.utils.set_random_seed(3)
    model = small_convnet()
    randomize_normalization(model)  # so that moving them shows
    model.save_weights(directory / "pretrained.weights.h5")
    pretrained = replicas(state(model))
    optimizer = wrap(model, search_device="CPU")
    permuted = replicas(state(model))
    custom_loop(model, optimizer, STEPS)
    tf.train.Checkpoint(model=model, optimizer=optimizer).write(str(directory / "one/ckpt"))
    run_in_child(on_two_replicas, str(directory), cpu_devices=2)
    return {
        "pretrained": pretrained,
        "permuted": permuted,
        "fine_tuned": replicas(state(model, optimizer)),
        "directory": directory,
    }


def assert_replicas_identical(values, names=None):
    for name in names or values:
        assert values[name].shape[0] == 2, name
        np.testing.assert_array_equal(values[name][0], values[name][1], err_msg=name)


def assert_2to4_where_masked(values):
    for name in mask_names(values):
        kernel, mask = values[name.removesuffix(":mask")], values[name]
        assert masks.is_2to4(kernel[0]), name
        assert np.all(kernel[mask == 0] == 0), name


def test_two_replicas_permute_every_copy_exactly_as_one_device_does(runs):
    two = load(runs["directory"] / "permuted.npz")
    # Another process, another search backend (NumPy there, the CPU library
    # here), two replicas: the same bits in every copy.
    assert two.keys() == runs["permuted"].keys()
    for name, one in runs["permuted"].items():
        for replica in two[name]:
            np.testing.assert_array_equal(replica, one[0], err_msg=name)
    moved = {n for n in two if not np.array_equal(two[n][0], runs["pretrained"][n][0])}
    kernels = {"conv_1/kernel", "conv_2/kernel", "dense_1/kernel", "dense_2/kernel"}
    per_channel = {"norm/gamma", "norm/moving_variance", "conv_2/bias", "dense_1/bias"}
    assert kernels | per_channel <= moved


def test_fit_keeps_both_replicas_identical_with_the_one_device_masks(runs):
    fit = load(runs["directory"] / "fit.npz")
    trained = [name for name in fit if "norm/moving" not in name]  # Keras: per replica
    assert_replicas_identical(fit, trained)
    assert len(mask_names(fit)) == 4
    for name in mask_names(fit):  # from the same permuted weights as on one device
        np.testing.assert_array_equal(fit[name][0], runs["fine_tuned"][name][0], err_msg=name)
    assert_2to4_where_masked(fit)


def test_a_two_replica_checkpoint_restores_on_one_device_and_continues(runs):
    saved = load(runs["directory"] / "fit.npz")
    model = small_convnet()
    optimizer = wrap(model, permute=False)
    optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    checkpoint.read(str(runs["directory"] / "two/ckpt")).assert_consumed()
    restored = replicas(state(model, optimizer))
    for name, values in restored.items():
        np.testing.assert_array_equal(values[0], saved[name][0], err_msg=name)
    assert int(optimizer.iterations) == 8  # 2 epochs of 4 global batches
    custom_loop(model, optimizer, STEPS)
    continued = replicas(state(model, optimizer))
    assert int(optimizer.iterations) == 8 + STEPS
    for name in mask_names(saved):
        np.testing.assert_array_equal(continued[name], saved[name][:1], err_msg=name)
    assert_2to4_where_masked(continued)


def test_a_two_replica_keras_file_loads_on_one_device_and_continues(runs):
    saved = load(runs["directory"] / "fit.npz")
    model = keras.models.load_model(runs["directory"] / "two.keras")
    model.fit(*regression_data(model, samples=32), batch_size=16, verbose=0)
    continued = replicas(state(model, model.optimizer))
    assert int(model.optimizer.iterations) == 8 + 2
    for name in mask_names(saved):
        np.testing.assert_array_equal(continued[name], saved[name][:1], err_msg=name)
    assert_2to4_where_masked(continued)


def test_a_one_device_checkpoint_restores_on_two_replicas_and_continues(runs):
    one = runs["fine_tuned"]
    restored = load(runs["directory"] / "restored.npz")
    continued = load(runs["directory"] / "continued.npz")
    assert_replicas_identical(restored)
    for name, values in one.items():
        np.testing.assert_array_equal(restored[name][0], values[0], err_msg=name)
    trained = [name for name in continued if "norm/moving" not in name]
    assert_replicas_identical(continued, trained)
    assert continued["iterations"].tolist() == [2 * STEPS, 2 * STEPS]
    for name in mask_names(one):
        np.testing.assert_array_equal(continued[name][0], one[name][0], err_msg=name)
    assert_2to4_where_masked(continued)
