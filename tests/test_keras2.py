"""Keras 2 (tf_keras): the same two lines prune a tf_keras model with a tf_keras
optimizer, legacy (`tf_keras.optimizers.legacy.*`) or newer (`tf_keras.optimizers.*`).

tf_keras is imported directly, so no TF_USE_LEGACY_KERAS is needed in this
process; one test runs the original `tf.keras` snippet under it in a subprocess.
"""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from helpers import randomize_normalization
from helpers import regression_data
from helpers import small_convnet
from helpers import small_mlp

import tf_asp
from tf_asp import keras2
from tf_asp import masks

pytestmark = pytest.mark.usefixtures("fresh_tf_keras")

REPO = pathlib.Path(__file__).resolve().parents[1]

OPTIMIZERS = {
    "legacy_sgd_momentum": lambda: tf_keras.optimizers.legacy.SGD(0.05, momentum=0.9),
    "legacy_adam": lambda: tf_keras.optimizers.legacy.Adam(0.01),
    "legacy_rmsprop": lambda: tf_keras.optimizers.legacy.RMSprop(0.01),
    "sgd_momentum": lambda: tf_keras.optimizers.SGD(0.05, momentum=0.9),
    "adam": lambda: tf_keras.optimizers.Adam(0.01),
    "adamw": lambda: tf_keras.optimizers.AdamW(0.01, weight_decay=0.1),
}
KINDS = {"legacy": OPTIMIZERS["legacy_sgd_momentum"], "newer": OPTIMIZERS["adam"]}


def mlp():
    return small_mlp(api=tf_keras)


def wrap(model, optimizer=None, **kwargs):
    optimizer = optimizer or tf_keras.optimizers.legacy.SGD(0.05, momentum=0.9)
    kwargs.setdefault("permute", False)
    return tf_asp.AspOptimizerWrapperV2(optimizer, model, **kwargs)


def train_steps(model, optimizer, steps, mode="function"):
    """Runs `steps` updates through `apply_gradients`."""
    x, y = regression_data(model)

    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    step = tf.function(step) if mode == "function" else step
    for _ in range(steps):
        step()


def fit(model, optimizer, epochs=1, **compile_options):
    model.compile(optimizer=optimizer, loss="mse", **compile_options)
    x, y = regression_data(model)
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0)


def kernels(model):
    return {layer.name: layer.kernel.numpy() for layer in model.layers}


def mask_values(optimizer):
    return [mask.numpy() for mask in optimizer.masks]


def assert_same_masks(expected, optimizer):
    assert len(optimizer.masks) == len(expected) > 0
    for saved, restored in zip(expected, optimizer.masks):
        np.testing.assert_array_equal(saved, restored.numpy())


# The original TF-ASP usage ----------------------------------------------------


def test_the_original_snippet_permutes_plots_and_prunes_a_tf_keras_model(tmp_path):
    model = small_convnet(api=tf_keras)
    randomize_normalization(model)
    plot = tmp_path / "network.pdf"

    opt = tf_keras.optimizers.legacy.SGD(learning_rate=0.2, momentum=1.0)
    opt = tf_asp.AspOptimizerWrapperV2(opt, model, padding=True, plot_to_file=str(plot))

    assert isinstance(opt, keras2.AspOptimizerWrapperV2)
    assert isinstance(opt, tf_keras.optimizers.Optimizer)
    summary = opt.permutation_summary
    assert summary.error < 1e-5
    assert summary.c_permuted == ["conv_2", "dense_1", "dense_2"]  # conv_1 reads the model input
    assert summary.k_permuted == ["conv_1", "conv_2", "dense_1"]
    assert plot.stat().st_size > 0
    model.compile(optimizer=opt, loss="mse")
    x = np.random.default_rng(0).standard_normal((32, 8, 8, 16)).astype("float32")
    model.fit(x, np.zeros((32, 16), "float32"), batch_size=16, verbose=0)
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (4, 4)


def test_the_original_tf_keras_snippet_runs_under_tf_use_legacy_keras():
    code = (
        "import numpy as np, tensorflow as tf, tf_asp\n"
        "model = tf.keras.Sequential([tf.keras.Input((32,)), tf.keras.layers.Dense(64),"
        " tf.keras.layers.Dense(16)])\n"
        "opt = tf.keras.optimizers.legacy.SGD(learning_rate=0.2, momentum=1.0)\n"
        "opt = tf_asp.AspOptimizerWrapperV2(opt, model, padding=True)\n"
        "model.compile(optimizer=opt, loss='mse')\n"
        "model.fit(np.ones((8, 32)), np.zeros((8, 16)), verbose=0)\n"
        "print(type(opt).__module__, tf_asp.check_pruned_layers(model, check_structured=True))\n"
    )
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["tf_asp.keras2", "(2,", "2)"]


# Masks: made once, kept every step ----------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_for_20_steps(name):
    model = mlp()
    optimizer = wrap(model, OPTIMIZERS[name]())
    train_steps(model, optimizer, 1)
    zeros_after_first = {k: v == 0 for k, v in kernels(model).items()}
    train_steps(model, optimizer, 19)
    for layer_name, kernel in kernels(model).items():
        assert masks.is_2to4(kernel), layer_name
        assert np.all(kernel[zeros_after_first[layer_name]] == 0.0), layer_name
        assert np.count_nonzero(kernel) == kernel.size // 2  # the kept weights trained


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_masks_come_from_the_weights_at_the_first_step_and_stay_frozen(kind):
    model = mlp()
    optimizer = wrap(model, KINDS[kind]())
    new_kernel = np.random.default_rng(5).standard_normal((32, 64))
    model.get_layer("hidden").kernel.assign(new_kernel)  # loaded after wrapping
    train_steps(model, optimizer, 1)
    np.testing.assert_array_equal(optimizer.masks[0].numpy(), masks.mask_2to4(new_kernel))
    at_step_1 = mask_values(optimizer)
    train_steps(model, optimizer, 9)
    assert_same_masks(at_step_1, optimizer)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("mode", ["function", "eager"])
def test_iterations_advance_once_per_step(kind, mode):
    model = mlp()
    optimizer = wrap(model, KINDS[kind]())
    train_steps(model, optimizer, 3, mode=mode)
    assert int(optimizer.iterations) == 3
    assert all(masks.is_2to4(k) for k in kernels(model).values())


def test_minimize_prunes_as_apply_gradients_does():
    model = mlp()
    optimizer = wrap(model)
    x, y = regression_data(model)
    for _ in range(2):
        optimizer.minimize(lambda: tf.reduce_mean((model(x) - y) ** 2), model.trainable_variables)
    assert int(optimizer.iterations) == 2
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (2, 2)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_model_fit_keeps_kernels_2to4(kind):
    model = mlp()
    optimizer = wrap(model, KINDS[kind]())
    fit(model, optimizer, epochs=2)
    assert int(optimizer.iterations) == 8
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (2, 2)


def test_model_fit_with_a_moving_average_ends_2to4():
    # Newer tf_keras optimizers overwrite the weights with their average at the end.
    model = mlp()
    optimizer = wrap(model, tf_keras.optimizers.Adam(0.01, use_ema=True))
    fit(model, optimizer)
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (2, 2)


def test_learning_rate_reads_and_writes_through_to_the_wrapped_optimizer():
    for inner in (tf_keras.optimizers.legacy.SGD(0.1), tf_keras.optimizers.SGD(0.1)):
        optimizer = wrap(mlp(), inner)
        assert float(optimizer.learning_rate) == pytest.approx(0.1)
        optimizer.learning_rate = 0.5
        assert float(inner.learning_rate) == pytest.approx(0.5)
        assert float(optimizer.lr) == pytest.approx(0.5)


def test_unprunable_layers_train_normally_and_are_never_masked():
    model = small_mlp(inputs=12, hidden=32, api=tf_keras)  # 12 input channels
    before = model.get_layer("hidden").kernel.numpy()
    optimizer = wrap(model)
    train_steps(model, optimizer, 3)
    narrow = model.get_layer("hidden").kernel.numpy()
    assert len(optimizer.masks) == 1
    assert np.count_nonzero(narrow) == narrow.size and not np.allclose(narrow, before)


def test_deprecated_v1_wrapper_warns_and_prunes_without_permuting():
    model = mlp()
    with pytest.warns(DeprecationWarning, match="AspOptimizerWrapperV2"):
        optimizer = tf_asp.AspOptimizerWrapper(tf_keras.optimizers.legacy.SGD(0.1), model)
    assert isinstance(optimizer, keras2.AspOptimizerWrapper)
    assert optimizer.permutation_summary is None
    train_steps(model, optimizer, 2)
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (2, 2)


def test_keras_3_keeps_working_in_the_same_process():
    keras_model, tf_keras_model = small_mlp(), mlp()
    for model, inner in (
        (tf_keras_model, tf_keras.optimizers.legacy.SGD(0.05)),
        (keras_model, keras.optimizers.SGD(0.05)),
    ):
        optimizer = tf_asp.AspOptimizerWrapperV2(inner, model, permute=False)
        fit(model, optimizer)
    assert isinstance(keras_model.optimizer, tf_asp.AspOptimizerWrapperV2)
    assert isinstance(tf_keras_model.optimizer, keras2.AspOptimizerWrapperV2)
    for model in (keras_model, tf_keras_model):
        assert tf_asp.check_pruned_layers(model, check_structured=True) == (2, 2)


# Saving and restoring -------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_checkpoint_restore_continues_with_the_same_masks(kind, tmp_path):
    model = mlp()
    optimizer = wrap(model, KINDS[kind]())
    train_steps(model, optimizer, 5)
    saved = mask_values(optimizer)
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))

    tf_keras.utils.set_random_seed(99)  # a different initialization
    fresh_model = mlp()
    fresh = wrap(fresh_model, KINDS[kind]())
    status = tf.train.Checkpoint(model=fresh_model, optimizer=fresh).restore(path)
    fresh.build(fresh_model.trainable_variables)  # restored as they are created
    status.assert_consumed()
    assert int(fresh.iterations) == 5
    train_steps(fresh_model, fresh, 5)
    assert int(fresh.iterations) == 10
    assert_same_masks(saved, fresh)
    assert tf_asp.check_pruned_layers(fresh_model, check_structured=True) == (2, 2)


def test_tf_format_weights_keep_the_optimizer_and_its_masks(tmp_path):
    model = mlp()
    optimizer = wrap(model)
    model.compile(optimizer=optimizer, loss="mse")
    x, y = regression_data(model)
    model.fit(x, y, batch_size=16, verbose=0)
    saved = mask_values(optimizer)
    model.save_weights(str(tmp_path / "weights"))  # no .h5: a TensorFlow checkpoint

    tf_keras.utils.set_random_seed(99)
    fresh_model = mlp()
    fresh = wrap(fresh_model)
    fresh_model.compile(optimizer=fresh, loss="mse")
    fresh_model.load_weights(str(tmp_path / "weights"))
    fresh.build(fresh_model.trainable_variables)
    assert int(fresh.iterations) == 4
    assert_same_masks(saved, fresh)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("file_name", ["pruned.h5", "pruned.keras"])
def test_model_file_round_trip_keeps_masks_and_optimizer_state(kind, file_name, tmp_path):
    model = mlp()
    optimizer = wrap(model, KINDS[kind]())
    fit(model, optimizer)
    saved = mask_values(optimizer)
    model.save(tmp_path / file_name)

    loaded = tf_keras.models.load_model(tmp_path / file_name)
    assert isinstance(loaded.optimizer, keras2.AspOptimizerWrapperV2)
    assert int(loaded.optimizer.iterations) == 4
    assert_same_masks(saved, loaded.optimizer)
    x, y = regression_data(loaded)
    loaded.fit(x, y, batch_size=16, verbose=0)
    assert_same_masks(saved, loaded.optimizer)
    assert tf_asp.check_pruned_layers(loaded, check_structured=True) == (2, 2)


def test_savedmodel_serves_the_pruned_model_and_fine_tunes_on_with_the_same_masks(tmp_path):
    model = mlp()
    optimizer = wrap(model)
    fit(model, optimizer)
    saved = mask_values(optimizer)
    path = str(tmp_path / "saved_model")
    model.save(path)
    x, y = regression_data(model)

    served = tf.saved_model.load(path)(tf.constant(x))
    np.testing.assert_allclose(served.numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
    # tf_keras restores the weights but not the optimizer from a SavedModel: the
    # masks are computed again at the first step, from kernels already 2:4.
    loaded = tf_keras.models.load_model(path)
    assert int(loaded.optimizer.iterations) == 0
    loaded.fit(x, y, batch_size=16, verbose=0)
    assert_same_masks(saved, loaded.optimizer)
    # The SavedModel's checkpoint holds the optimizer too.
    restored = tf_keras.models.load_model(path)
    restored.load_weights(os.path.join(path, "variables", "variables")).expect_partial()
    restored.optimizer.build(restored.trainable_variables)
    assert int(restored.optimizer.iterations) == 4
    assert_same_masks(saved, restored.optimizer)


def test_config_round_trips():
    optimizer = wrap(mlp(), tf_keras.optimizers.legacy.Adam(0.01), padding=True)
    config = optimizer.get_config()
    clone = keras2.AspOptimizerWrapperV2.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.inner_optimizer, tf_keras.optimizers.legacy.Adam)
    restored = tf_keras.optimizers.deserialize(tf_keras.optimizers.serialize(optimizer))
    assert isinstance(restored, keras2.AspOptimizerWrapperV2)


# Bad input ------------------------------------------------------------------------


def test_an_unbuilt_tf_keras_model_is_refused_with_how_to_build_it():
    model = tf_keras.Sequential([tf_keras.layers.Dense(16)])
    with pytest.raises(ValueError, match="not built.*model.build"):
        wrap(model)


def test_something_that_is_no_optimizer_is_refused_for_a_tf_keras_model():
    with pytest.raises(TypeError, match="wraps a tf_keras optimizer.*got str"):
        tf_asp.AspOptimizerWrapperV2("sgd", mlp())


def test_the_same_tf_keras_optimizer_cannot_be_wrapped_twice():
    inner = tf_keras.optimizers.legacy.SGD(0.1)
    wrapped = wrap(mlp(), inner)
    with pytest.raises(ValueError, match="SGD optimizer is already wrapped"):
        wrap(mlp(), inner)
    with pytest.raises(ValueError, match="already an AspOptimizerWrapperV2"):
        wrap(mlp(), wrapped)


def test_restored_wrapper_refuses_a_different_model():
    clone = keras2.AspOptimizerWrapperV2.from_config(wrap(mlp()).get_config())
    with pytest.raises(ValueError, match="shape"):
        clone.build(small_mlp(hidden=32, api=tf_keras).trainable_variables)
