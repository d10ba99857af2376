"""Activation norms: each pruned kernel's input channels, L2 over every
calibration token or pixel, read from tf_asp's op graph for any kind of model;
clear errors for data that does not fit and for inputs it cannot see."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import BroadcastProjection
from helpers import dense_attention
from helpers import encoder
from helpers import small_convnet

from tf_asp import pruning
from tf_asp.calibration import ActivationProbe

pytestmark = pytest.mark.usefixtures("fresh_keras")
layers = keras.layers


def norms_by_layer(model, data, **options):
    """{layer name: norms} as the probe reads them (top-level layers)."""
    kernels = pruning.prunable_kernels(model)
    norms = ActivationProbe(model, kernels, data, **options).channel_norms()
    return {name.split(" ")[0].split("/")[-2]: value for name, value in norms.items()}


def l2_over_all_but_channels(activations):
    a = np.asarray(activations, dtype=np.float64)
    return np.sqrt(np.sum(a**2, axis=tuple(range(a.ndim - 1))))


def layer_input_norms(model, name, x):
    """The reference: the layer's input computed by Keras, then its norms."""
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return l2_over_all_but_channels(keras.Model(inputs, model.get_layer(name).input)(x))


def images(count=70, seed=0):
    return np.random.default_rng(seed).standard_normal((count, 8, 8, 16)).astype("float32")


def test_norms_are_each_layers_input_channel_norms_over_every_pixel():
    model = small_convnet()
    x = images()
    norms = norms_by_layer(model, x)
    assert sorted(norms) == ["conv_1", "conv_2", "dense_1", "dense_2"]
    for name, value in norms.items():
        np.testing.assert_allclose(value, layer_input_norms(model, name, x), rtol=1e-5)


def test_transformer_kernels_read_their_tokens_inputs():
    inputs = keras.Input((16, 32))
    h = layers.Dense(64, name="embed")(inputs)
    h = layers.LayerNormalization()(h + dense_attention(h, 4, "attention"))
    model = keras.Model(inputs, layers.Dense(16, name="head")(h))
    x = np.random.default_rng(1).standard_normal((40, 16, 32)).astype("float32")
    norms = norms_by_layer(model, x)
    for name in ("embed", "attention_q", "attention_o", "head"):
        np.testing.assert_allclose(norms[name], layer_input_norms(model, name, x), rtol=1e-5)


def test_multi_head_attention_projections_of_one_input_share_its_norms():
    model = encoder(blocks=1)
    x = np.random.default_rng(2).standard_normal((24, 16, 32)).astype("float32")
    kernels = pruning.prunable_kernels(model)
    norms = ActivationProbe(model, kernels, x).channel_norms()
    assert set(norms) == set(kernels)
    by_path = {name.split(" ")[0]: value for name, value in norms.items()}
    query = by_path["block_0_attention/query/kernel"]
    np.testing.assert_array_equal(query, by_path["block_0_attention/key/kernel"])
    np.testing.assert_array_equal(query, by_path["block_0_attention/value/kernel"])
    assert by_path["block_0_attention/attention_output/kernel"].shape == (64,)
    assert all(np.all(value > 0) for value in norms.values())


def test_sequential_and_subclassed_models_are_probed_alike():
    dense = [layers.Dense(32, activation="relu", name="a"), layers.Dense(16, name="b")]
    sequential = keras.Sequential([keras.Input((16,)), *dense])

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b = dense

        def call(self, x):
            return self.b(self.a(x))

    subclassed = Subclassed()
    subclassed(np.zeros((1, 16), "float32"))
    x = np.random.default_rng(3).standard_normal((50, 16)).astype("float32")
    expected = {"a": l2_over_all_but_channels(x), "b": l2_over_all_but_channels(dense[0](x))}
    for model in (sequential, subclassed):
        norms = norms_by_layer(model, x)
        for name in expected:
            np.testing.assert_allclose(norms[name], expected[name], rtol=1e-5)


def test_a_layer_used_twice_counts_both_inputs():
    shared = layers.Dense(16, name="shared")
    first, second = keras.Input((32,)), keras.Input((32,))
    model = keras.Model([first, second], layers.Add()([shared(first), shared(second)]))
    rng = np.random.default_rng(4)
    x = [rng.standard_normal((40, 32)).astype("float32") for _ in range(2)]
    norms = norms_by_layer(model, x)
    expected = np.sqrt(l2_over_all_but_channels(x[0]) ** 2 + l2_over_all_but_channels(x[1]) ** 2)
    np.testing.assert_allclose(norms["shared"], expected, rtol=1e-5)


def test_a_dataset_and_arrays_give_the_same_norms():
    model = small_convnet()
    x = images(100)
    from_arrays = norms_by_layer(model, x)
    labels = np.zeros(100, "int32")
    for dataset in (
        tf.data.Dataset.from_tensor_slices(x).batch(32),
        tf.data.Dataset.from_tensor_slices((x, labels)).batch(32),
        tf.data.Dataset.from_tensor_slices((x, labels, labels)).batch(32),
    ):
        from_dataset = norms_by_layer(model, dataset)
        for name in from_arrays:
            np.testing.assert_array_equal(from_dataset[name], from_arrays[name])
    other_batches = norms_by_layer(model, tf.data.Dataset.from_tensor_slices(x).batch(48))
    for name in from_arrays:
        np.testing.assert_allclose(other_batches[name], from_arrays[name], rtol=1e-6)


def test_token_ids_are_calibration_data_too():
    model = encoder(blocks=1, vocabulary=50)
    ids = np.random.default_rng(5).integers(0, 50, (30, 16))
    norms = norms_by_layer(model, ids)
    assert norms["head"].shape == (64,) and np.all(norms["head"] > 0)


def test_a_tf_keras_model_is_probed_alike():
    import tf_keras

    model = small_convnet(api=tf_keras)
    x = images()
    norms = norms_by_layer(model, x)
    reference = tf_keras.Model(model.inputs, model.get_layer("dense_1").input)(x)
    np.testing.assert_allclose(norms["dense_1"], l2_over_all_but_channels(reference), rtol=1e-5)


def test_a_kernel_whose_input_cannot_be_seen_is_named_in_the_error():
    model = keras.Sequential([keras.Input((32,)), BroadcastProjection(name="projection")])
    x = np.ones((8, 32), "float32")
    with pytest.raises(ValueError, match=r"cannot see the input of 1 pruned kernel.*projection/w"):
        norms_by_layer(model, x)


@pytest.mark.parametrize(
    "data, match",
    [
        (None, "needs calibration_data"),
        (np.ones((10, 8, 8, 3), "float32"), r"got shape \(10, 8, 8, 3\).*takes shape"),
        (np.ones((8, 8, 16), "float32"), "takes shape"),  # one sample, unbatched
        (np.ones((0, 8, 8, 16), "float32"), "holds no samples"),
        ([np.ones((4, 8, 8, 16)), np.ones((4, 8, 8, 16))], "holds 2 input arrays"),
        ([np.ones((4, 8, 8, 16)), np.ones((5, 8, 8, 16))], "same number of samples"),
        (tf.data.Dataset.from_tensor_slices(np.ones((4, 8, 8, 16))), "must be batched"),
    ],
    ids=["none", "channels", "unbatched", "empty", "two_inputs", "lengths", "dataset"],
)
def test_calibration_data_that_does_not_fit_the_model_is_refused(data, match):
    with pytest.raises(ValueError, match=match):
        norms_by_layer(small_convnet(), data)


def test_float_data_for_token_ids_is_refused():
    with pytest.raises(ValueError, match="dtype int32"):
        norms_by_layer(encoder(blocks=1, vocabulary=50), np.ones((4, 16), "float32"))
