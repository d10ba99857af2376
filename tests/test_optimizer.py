"""AspOptimizerWrapperV2 prunes at the first step and keeps kernels 2:4."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import regression_data
from helpers import small_mlp

import tf_asp
from tf_asp import masks

pytestmark = pytest.mark.usefixtures("fresh_keras")

OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.01),
}


def wrap(model, optimizer=None, **kwargs):
    optimizer = optimizer or keras.optimizers.SGD(0.05, momentum=0.9)
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


def kernels(model):
    return {layer.name: layer.kernel.numpy() for layer in model.layers}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_for_20_steps(name):
    model = small_mlp()
    optimizer = wrap(model, OPTIMIZERS[name]())
    train_steps(model, optimizer, 1)
    zeros_after_first = {k: v == 0 for k, v in kernels(model).items()}
    train_steps(model, optimizer, 19)
    for layer_name, kernel in kernels(model).items():
        assert masks.is_2to4(kernel), layer_name
        assert np.all(kernel[zeros_after_first[layer_name]] == 0.0), layer_name
        # The kept weights did train.
        assert np.count_nonzero(kernel) == kernel.size // 2


def test_masks_are_computed_once_and_frozen():
    model = small_mlp()
    optimizer = wrap(model, keras.optimizers.Adam(0.05))
    train_steps(model, optimizer, 1)
    at_step_1 = [m.numpy() for m in optimizer.masks]
    train_steps(model, optimizer, 19)
    assert len(at_step_1) == 2
    for before, after in zip(at_step_1, optimizer.masks):
        np.testing.assert_array_equal(before, after.numpy())


def test_masks_come_from_the_weights_at_the_first_step():
    model = small_mlp()
    optimizer = wrap(model)
    # Weights loaded after wrapping (say, a pretrained checkpoint) count.
    new_kernel = np.random.default_rng(5).standard_normal((32, 64))
    model.get_layer("hidden").kernel.assign(new_kernel)
    expected = np.asarray(masks.mask_2to4(new_kernel))
    train_steps(model, optimizer, 1)
    np.testing.assert_array_equal(optimizer.masks[0].numpy(), expected)


@pytest.mark.parametrize("mode", ["function", "eager"])
def test_iterations_advance_once_per_step(mode):
    model = small_mlp()
    optimizer = wrap(model)
    train_steps(model, optimizer, 3, mode=mode)
    assert int(optimizer.iterations) == 3
    assert all(masks.is_2to4(k) for k in kernels(model).values())


def test_unprunable_layers_train_normally_and_are_never_masked():
    model = keras.Sequential(
        [
            keras.Input((12,)),  # 12 input channels: not prunable
            keras.layers.Dense(32, name="narrow"),
            keras.layers.Dense(16, name="wide"),
        ]
    )
    optimizer = wrap(model)
    before = model.get_layer("narrow").kernel.numpy()
    train_steps(model, optimizer, 5)
    narrow = model.get_layer("narrow").kernel.numpy()
    assert len(optimizer.masks) == 1
    assert np.count_nonzero(narrow) == narrow.size
    assert not np.allclose(narrow, before)
    assert masks.is_2to4(model.get_layer("wide").kernel.numpy())


@pytest.mark.parametrize("jit_compile", [False, True])
def test_model_fit_keeps_kernels_2to4(jit_compile):
    model = small_mlp()
    optimizer = wrap(model, keras.optimizers.Adam(0.01))
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    x, y = regression_data(model)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert int(optimizer.iterations) == 8
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (2, 2)


def test_model_fit_with_a_moving_average_ends_2to4():
    # fit() ends by overwriting the weights with their moving average.
    model = small_mlp()
    optimizer = wrap(model, keras.optimizers.Adam(0.01, use_ema=True))
    model.compile(optimizer=optimizer, loss="mse")
    x, y = regression_data(model)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (2, 2)


def test_model_fit_with_a_learning_rate_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5)
    model = small_mlp()
    optimizer = wrap(model, keras.optimizers.SGD(schedule))
    model.compile(optimizer=optimizer, loss="mse")
    x, y = regression_data(model)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # The schedule runs on the wrapped optimizer's iterations: 0.1 * 0.5**2.
    assert float(optimizer.learning_rate) == pytest.approx(0.025)
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (2, 2)


def test_learning_rate_reads_and_writes_through_to_the_wrapped_optimizer():
    inner = keras.optimizers.SGD(0.1)
    optimizer = wrap(small_mlp(), inner)
    assert float(optimizer.learning_rate) == pytest.approx(0.1)
    optimizer.learning_rate = 0.5
    assert float(inner.learning_rate) == pytest.approx(0.5)


def test_padding_prunes_dense_kernels_whose_input_dim_does_not_divide():
    def model():
        return keras.Sequential([keras.Input((18,)), keras.layers.Dense(8, name="odd")])

    unpadded = model()
    with pytest.warns(UserWarning, match="no prunable GEMM layer"):
        optimizer = wrap(unpadded)
    train_steps(unpadded, optimizer, 2)
    assert np.count_nonzero(unpadded.layers[0].kernel.numpy()) == 18 * 8

    padded = model()
    train_steps(padded, wrap(padded, padding=True), 2)
    kernel = padded.layers[0].kernel.numpy()
    assert masks.is_2to4(kernel)
    # 4 full groups keep 2 each, the partial group of 2 keeps 1: 9 of 18.
    assert np.all(np.count_nonzero(kernel, axis=0) == 9)


def test_checkpoint_restore_continues_with_the_same_masks(tmp_path):
    model = small_mlp()
    optimizer = wrap(model, keras.optimizers.Adam(0.01))
    train_steps(model, optimizer, 5)
    saved_masks = [m.numpy() for m in optimizer.masks]
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))

    keras.utils.set_random_seed(99)  # a different initialization
    fresh_model = small_mlp()
    fresh = wrap(fresh_model, keras.optimizers.Adam(0.01))
    fresh.build(fresh_model.trainable_variables)
    tf.train.Checkpoint(model=fresh_model, optimizer=fresh).restore(path).assert_consumed()
    assert int(fresh.iterations) == 5
    train_steps(fresh_model, fresh, 5)
    assert int(fresh.iterations) == 10
    for saved, restored in zip(saved_masks, fresh.masks):
        np.testing.assert_array_equal(saved, restored.numpy())
    for layer in fresh_model.layers:
        mask = saved_masks[fresh_model.layers.index(layer)]
        assert np.all(layer.kernel.numpy()[mask == 0] == 0)


def test_keras_file_round_trip_keeps_masks_and_optimizer_state(tmp_path):
    model = small_mlp()
    optimizer = wrap(model, keras.optimizers.Adam(0.01))
    model.compile(optimizer=optimizer, loss="mse")
    x, y = regression_data(model)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.save(tmp_path / "pruned.keras")

    loaded = keras.models.load_model(tmp_path / "pruned.keras")
    assert isinstance(loaded.optimizer, tf_asp.AspOptimizerWrapperV2)
    assert int(loaded.optimizer.iterations) == 4
    for saved, restored in zip(optimizer.masks, loaded.optimizer.masks):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for saved, restored in zip(optimizer.masks, loaded.optimizer.masks):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    assert tf_asp.check_pruned_layers(loaded, check_structured=True) == (2, 2)


def test_config_round_trips():
    optimizer = wrap(small_mlp(), keras.optimizers.Adam(0.01), padding=True)
    config = optimizer.get_config()
    clone = tf_asp.AspOptimizerWrapperV2.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.inner_optimizer, keras.optimizers.Adam)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, tf_asp.AspOptimizerWrapperV2)


def test_deprecated_v1_wrapper_warns_and_prunes_without_permuting():
    model = small_mlp()
    with pytest.warns(DeprecationWarning, match="AspOptimizerWrapperV2"):
        optimizer = tf_asp.AspOptimizerWrapper(keras.optimizers.SGD(0.1), model)
    assert optimizer.permutation_summary is None
    train_steps(model, optimizer, 2)
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (2, 2)


def test_check_pruned_layers_counts_and_prints(capsys):
    model = small_mlp()
    assert tf_asp.check_pruned_layers(model) == (0, 2)
    train_steps(model, wrap(model), 1)
    assert tf_asp.check_pruned_layers(model, show_all=True) == (2, 2)
    printed = capsys.readouterr().out
    assert "hidden" in printed and "2:4=yes" in printed
