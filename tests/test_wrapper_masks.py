"""The wrappers (Keras 3 and tf_keras) with other masks: N:M patterns,
transposable masks, activation-aware scores; kept through training and saved
with the wrapper."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from helpers import regression_data
from helpers import small_convnet
from helpers import small_mlp

import tf_asp
from tf_asp import masks
from tf_asp import pruning
from tf_asp.calibration import ActivationProbe

pytestmark = pytest.mark.usefixtures("fresh_keras", "fresh_tf_keras")

APIS = {"keras": keras, "tf_keras": tf_keras}


def wrap(model, api, **kwargs):
    kwargs.setdefault("permute", False)
    return tf_asp.AspOptimizerWrapperV2(api.optimizers.Adam(0.01), model, **kwargs)


def fit(model, optimizer, epochs=1):
    model.compile(optimizer=optimizer, loss="mse")
    x, y = regression_data(model)
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0)


def kernels(model):
    return pruning.prunable_kernels(model)


@pytest.mark.parametrize("api", sorted(APIS))
@pytest.mark.parametrize("pattern", ["1:2", "4:8", "2:16"])
def test_training_keeps_every_kernel_to_the_pattern(api, pattern):
    model = small_mlp(api=APIS[api])
    optimizer = wrap(model, APIS[api], pattern=pattern)
    fit(model, optimizer, epochs=2)
    n, m = (int(p) for p in pattern.split(":"))
    for name, kernel in kernels(model).items():
        value = kernel.variable.numpy()
        assert masks.is_nm(value, kernel.input_axes, pattern), name
        assert np.count_nonzero(value) == value.size * n // m, name
    assert tf_asp.check_pruned_layers(model, check_structured=True, pattern=pattern) == (2, 2)
    if pattern == "1:2":  # 1 of every 2 is 2 of every 4 too
        assert tf_asp.check_pruned_layers(model, check_structured=True) == (2, 2)


@pytest.mark.parametrize("api", sorted(APIS))
@pytest.mark.parametrize("method", ["best", "greedy"])
def test_training_keeps_transposable_masks_both_ways(api, method):
    model = small_convnet(api=APIS[api])
    optimizer = wrap(model, APIS[api], transposable=method)
    model.compile(optimizer=optimizer, loss="mse")
    x = np.random.default_rng(0).standard_normal((16, 8, 8, 16)).astype("float32")
    model.fit(x, np.ones((16, 16), "float32"), batch_size=8, epochs=2, verbose=0)
    for name, kernel in kernels(model).items():
        value = kernel.variable.numpy()
        assert masks.is_transposable(value, kernel.input_axes, kernel.output_axes), name
    assert tf_asp.check_pruned_layers(model, check_structured=True, transposable=True) == (4, 4)


@pytest.mark.parametrize("api", sorted(APIS))
def test_activation_masks_come_from_the_first_steps_weights_times_the_norms(api):
    model = small_mlp(api=APIS[api])
    x = np.random.default_rng(1).standard_normal((80, 32)).astype("float32")
    x *= np.geomspace(0.01, 100.0, 32).astype("float32")
    optimizer = wrap(model, APIS[api], criterion="activation", calibration_data=x)
    hidden = model.get_layer("hidden").kernel
    new_kernel = np.random.default_rng(2).standard_normal((32, 64)).astype("float32")
    hidden.assign(new_kernel)  # loaded after wrapping: counts, with the norms read before
    norms = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=0))
    expected = masks.nm_mask(np.abs(new_kernel) * norms[:, None], (0,)).numpy()
    fit(model, optimizer)
    np.testing.assert_array_equal(optimizer.masks[0].numpy(), expected)
    assert not np.array_equal(expected, masks.mask_2to4(new_kernel, (0,)).numpy())


@pytest.mark.parametrize("api", sorted(APIS))
def test_activation_norms_follow_the_permutation(api):
    model = small_convnet(api=APIS[api])
    x = np.random.default_rng(3).standard_normal((48, 8, 8, 16)).astype("float32")
    optimizer = tf_asp.AspOptimizerWrapperV2(
        APIS[api].optimizers.SGD(0.01),
        model,
        criterion="activation",
        calibration_data=x,
        search_device="CPU",
    )
    assert optimizer.permutation_summary.groups
    optimizer.build(model.trainable_variables)
    expected = ActivationProbe(model, kernels(model), x).channel_norms()
    norms = [v.numpy() for v in optimizer.variables if "asp_channel_norms" in variable_name(v)]
    assert len(norms) == 4
    for value, reference in zip(norms, expected.values()):
        np.testing.assert_allclose(value, reference, rtol=1e-5)


def variable_name(variable):
    return getattr(variable, "path", None) or variable.name


@pytest.mark.parametrize("api", sorted(APIS))
def test_the_config_keeps_pattern_transposable_and_criterion(api):
    model = small_mlp(api=APIS[api])
    optimizer = wrap(model, APIS[api], transposable="greedy")
    config = optimizer.get_config()
    assert (config["pattern"], config["transposable"], config["criterion"]) == (
        "2:4",
        "greedy",
        "magnitude",
    )
    clone = type(optimizer).from_config(config)
    assert clone.get_config() == config
    other = wrap(small_mlp(api=APIS[api]), APIS[api], pattern=" 4 : 8 ")
    assert type(other).from_config(other.get_config()).get_config()["pattern"] == "4:8"


def test_a_keras_file_round_trip_keeps_the_norms_masks_and_options(tmp_path):
    model = small_mlp()
    x = np.random.default_rng(4).standard_normal((64, 32)).astype("float32")
    optimizer = wrap(model, keras, pattern="4:8", criterion="activation", calibration_data=x)
    fit(model, optimizer)
    model.save(tmp_path / "pruned.keras")
    loaded = keras.models.load_model(tmp_path / "pruned.keras")
    restored = loaded.optimizer
    assert restored.get_config()["criterion"] == "activation"
    assert str(restored.options.pattern) == "4:8"
    assert len(restored.variables) == len(optimizer.variables)
    for saved, value in zip(optimizer.variables, restored.variables):
        np.testing.assert_array_equal(saved.numpy(), value.numpy())
    fit(loaded, restored)
    assert tf_asp.check_pruned_layers(loaded, check_structured=True, pattern="4:8") == (2, 2)


def test_a_tf_keras_checkpoint_restores_the_norms_before_the_first_step(tmp_path):
    model = small_mlp(api=tf_keras)
    x = np.random.default_rng(5).standard_normal((64, 32)).astype("float32")
    x *= np.geomspace(0.01, 100.0, 32).astype("float32")
    optimizer = wrap(model, tf_keras, criterion="activation", calibration_data=x)
    optimizer.build(model.trainable_variables)
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    fit(model, optimizer)
    masks_of_the_original = [m.numpy() for m in optimizer.masks]

    restored_model = small_mlp(api=tf_keras)
    restored = type(optimizer).from_config(optimizer.get_config())
    status = tf.train.Checkpoint(model=restored_model, optimizer=restored).restore(path)
    restored.build(restored_model.trainable_variables)
    status.assert_consumed()
    assert int(restored.iterations) == 0
    fit(restored_model, restored)
    for expected, mask in zip(masks_of_the_original, restored.masks):
        np.testing.assert_array_equal(expected, mask.numpy())
