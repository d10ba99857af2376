"""Bad input gets a clear error and leaves the model as it was."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import small_mlp

import tf_asp

pytestmark = pytest.mark.usefixtures("fresh_keras")


def weights_of(model):
    return [w.numpy() for w in model.weights]


def test_unbuilt_model_is_refused_with_how_to_build_it():
    model = keras.Sequential([keras.layers.Dense(16)])
    with pytest.raises(ValueError, match="not built.*model.build"):
        tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.1), model, permute=False)


def test_a_non_keras_model_is_refused():
    with pytest.raises(TypeError, match="keras.Model"):
        tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.1), tf.Module(), permute=False)


def test_a_tf_keras_optimizer_for_a_keras_3_model_is_refused_naming_both():
    import tf_keras

    model = small_mlp()
    before = weights_of(model)
    message = r"Keras 2 \(tf_keras\) SGD.*Keras 3 Sequential.*same Keras"
    with pytest.raises(TypeError, match=message):
        tf_asp.AspOptimizerWrapperV2(tf_keras.optimizers.legacy.SGD(0.1), model)
    for old, new in zip(before, weights_of(model)):
        np.testing.assert_array_equal(old, new)


def test_a_keras_3_optimizer_for_a_tf_keras_model_is_refused_naming_both():
    import tf_keras

    model = tf_keras.Sequential(
        [tf_keras.Input((32,)), tf_keras.layers.Dense(64), tf_keras.layers.Dense(16)]
    )
    before = weights_of(model)
    with pytest.raises(TypeError, match=r"Keras 3 SGD.*Keras 2 \(tf_keras\) Sequential.*tf_keras"):
        tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.1), model)
    for old, new in zip(before, weights_of(model)):
        np.testing.assert_array_equal(old, new)


def test_something_that_is_no_optimizer_is_refused():
    with pytest.raises(TypeError, match="wraps a keras.optimizers.Optimizer.*got str"):
        tf_asp.AspOptimizerWrapperV2("sgd", small_mlp(), permute=False)


def test_the_same_optimizer_cannot_be_wrapped_twice():
    inner = keras.optimizers.SGD(0.1)
    wrapped = tf_asp.AspOptimizerWrapperV2(inner, small_mlp(), permute=False)
    with pytest.raises(ValueError, match="already wrapped"):
        tf_asp.AspOptimizerWrapperV2(inner, small_mlp(), permute=False)
    with pytest.raises(ValueError, match="already an AspOptimizerWrapperV2"):
        tf_asp.AspOptimizerWrapperV2(wrapped, small_mlp(), permute=False)


def test_a_model_without_prunable_layers_warns_and_trains_densely():
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(6)])
    with pytest.warns(UserWarning, match="no prunable"):
        optimizer = tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.1), model, permute=False)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((8, 12)), np.ones((8, 6)), verbose=0)
    assert optimizer.masks == []
    assert np.count_nonzero(model.layers[0].kernel.numpy()) == 72


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_or_inf_in_a_kernel_names_the_layer_and_changes_nothing(bad_value):
    model = small_mlp()
    kernel = model.get_layer("hidden").kernel.numpy()
    kernel[3, 5] = bad_value
    model.get_layer("hidden").kernel.assign(kernel)
    before = weights_of(model)
    with pytest.raises(ValueError, match="hidden.*NaN or Inf"):
        tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.1), model)
    for old, new in zip(before, weights_of(model)):
        np.testing.assert_array_equal(old, new)


def test_nan_appearing_before_the_first_step_is_caught_at_build():
    model = small_mlp()
    optimizer = tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.1), model, permute=False)
    model.get_layer("out").kernel.assign(np.full((64, 16), np.nan))
    with pytest.raises(ValueError, match="NaN or Inf"):
        optimizer.build(model.trainable_variables)


@pytest.mark.parametrize(
    "option, match",
    [
        ({"search_device": "TPU"}, "search_device"),
        ({"search_time_limit": -1}, "search_time_limit"),
        ({"plot_to_file": "graph.jpg"}, "plot_to_file"),
        ({"learning_rate": 0.1}, "unexpected arguments"),
    ],
)
def test_invalid_options_are_refused(option, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.1), small_mlp(), **option)


def test_restored_wrapper_refuses_a_different_model():
    model = small_mlp()
    optimizer = tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.1), model, permute=False)
    clone = tf_asp.AspOptimizerWrapperV2.from_config(optimizer.get_config())
    other = small_mlp(hidden=32)
    with pytest.raises(ValueError, match="shape"):
        clone.build(other.trainable_variables)
