"""tf_asp.prune_model: permute for the pattern and the scores, prune every
eligible kernel once, report what each mask kept; a wrapper built afterwards
keeps exactly those zeros; bad arguments change nothing."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import BroadcastProjection
from helpers import encoder
from helpers import images
from helpers import kernel_values
from helpers import regression_data
from helpers import same_weights
from helpers import small_convnet
from helpers import twin
from helpers import weights

import tf_asp
from tf_asp import masks
from tf_asp import pruning
from tf_asp.calibration import ActivationProbe

pytestmark = pytest.mark.usefixtures("fresh_keras")

FAST = dict(search_device="CPU", search_time_limit=5)


@pytest.mark.parametrize("pattern", ["2:4", "1:2", "1:4", "4:8", "2:8", "8:16"])
def test_every_pattern_prunes_every_eligible_kernel_exactly(pattern):
    model = encoder(blocks=1)
    summary = tf_asp.prune_model(model, pattern=pattern, **FAST)
    n, m = (int(p) for p in pattern.split(":"))
    for name, value in kernel_values(model).items():
        assert masks.is_nm(value, pruning.prunable_kernels(model)[name].input_axes, pattern)
        assert np.count_nonzero(value) == value.size * n // m, name
    assert tf_asp.check_pruned_layers(model, check_structured=True, pattern=pattern) == (8, 8)
    assert {k.pattern for k in summary.kernels} == {pattern}
    assert summary.permutation.pattern == masks.parse_pattern(pattern)
    assert str(summary).startswith("Pruned 8 kernels")


@pytest.mark.parametrize("pattern", ["2:4", "1:2", "4:8"])
def test_permutation_keeps_more_of_every_kernel_for_its_pattern(pattern):
    model = small_convnet()
    unpermuted = twin(model)
    permuted = tf_asp.prune_model(model, pattern=pattern, **FAST)
    plain = tf_asp.prune_model(unpermuted, pattern=pattern, permute=False)
    assert plain.permutation is None
    for with_search, without in zip(permuted.kernels, plain.kernels):
        assert with_search.name == without.name
        assert with_search.total == pytest.approx(without.total)
        assert with_search.kept >= without.kept * (1 - 1e-6)
    assert sum(k.kept for k in permuted.kernels) > sum(k.kept for k in plain.kernels)
    for group in permuted.permutation.groups:
        assert group.magnitude >= group.identity_magnitude


def test_the_summary_reports_what_each_mask_kept():
    model = small_convnet()
    before = kernel_values(model)
    summary = tf_asp.prune_model(model, permute=False)
    after = kernel_values(model)
    for row in summary.kernels:
        assert row.criterion == "magnitude" and row.transposable is None
        assert row.total == pytest.approx(np.abs(before[row.name]).sum(), rel=1e-6)
        assert row.kept == pytest.approx(np.abs(after[row.name]).sum(), rel=1e-6)
        assert row.kept_1d == row.kept and 0.5 < row.kept_fraction < 1


@pytest.mark.parametrize("method", [True, "best", "greedy"])
def test_transposable_masks_are_2to4_along_inputs_and_outputs(method):
    model = small_convnet()
    summary = tf_asp.prune_model(model, transposable=method, **FAST)
    for name, kernel in pruning.prunable_kernels(model).items():
        value = kernel.variable.numpy()
        assert masks.is_transposable(value, kernel.input_axes, kernel.output_axes), name
    assert tf_asp.check_pruned_layers(model, check_structured=True, transposable=True) == (4, 4)
    for row in summary.kernels:
        assert row.transposable == ("best" if method is True else method)
        assert row.kept <= row.kept_1d * (1 + 1e-6)
    assert "1-D would keep" in str(summary)


def dense_model():
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(16, name="out"),
        ]
    )
    return model


def test_activation_masks_keep_the_largest_weight_times_input_norm():
    model = dense_model()
    x = np.random.default_rng(1).standard_normal((100, 32)).astype("float32")
    x *= np.geomspace(0.01, 100.0, 32).astype("float32")  # channels of very different size
    kernel = model.get_layer("hidden").kernel.numpy()
    norms = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=0))
    expected = masks.nm_mask(np.abs(kernel) * norms[:, None], (0,)).numpy()
    summary = tf_asp.prune_model(model, criterion="activation", calibration_data=x, permute=False)
    pruned = model.get_layer("hidden").kernel.numpy()
    np.testing.assert_array_equal(pruned != 0, expected != 0)
    assert not np.array_equal(expected, masks.mask_2to4(kernel, (0,)).numpy())
    row = summary.kernels[0]
    assert row.criterion == "activation"
    assert row.kept == pytest.approx(np.sum(np.abs(pruned) * norms[:, None]), rel=1e-5)


def test_activation_norms_are_read_again_after_the_permutation():
    model = small_convnet()
    x = images()
    options = pruning.PruningOptions(criterion="activation", **FAST)
    plan = pruning.prepare(model, options, x)
    assert plan.summary.groups  # something moved
    again = ActivationProbe(model, plan.kernels, x).channel_norms()
    for name in plan.kernels:
        np.testing.assert_allclose(plan.norms[name], again[name], rtol=1e-6)


def test_the_search_weighs_weights_by_their_activation_norms():
    model = small_convnet()
    x = images()
    x[..., :4] *= 50.0  # conv_1 reads 4 loud channels
    by_magnitude = tf_asp.prune_model(twin(model), **FAST).permutation
    by_activation = tf_asp.prune_model(
        model, criterion="activation", calibration_data=x, **FAST
    ).permutation
    assert [g.magnitude for g in by_magnitude.groups] != [g.magnitude for g in by_activation.groups]


def test_calibration_with_a_dataset_or_arrays_gives_the_same_masks():
    model = small_convnet()
    other = twin(model)
    x = images(96)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(96))).batch(32)
    tf_asp.prune_model(model, criterion="activation", calibration_data=x, **FAST)
    tf_asp.prune_model(other, criterion="activation", calibration_data=dataset, **FAST)
    for (name, a), b in zip(kernel_values(model).items(), kernel_values(other).values()):
        np.testing.assert_array_equal(a != 0, b != 0, err_msg=name)


SETTINGS = {
    "2:4": dict(),
    "1:2": dict(pattern="1:2"),
    "4:8": dict(pattern="4:8"),
    "best": dict(transposable="best"),
    "greedy": dict(transposable="greedy"),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_a_wrapper_built_afterwards_keeps_exactly_those_zeros(setting):
    model = small_convnet()
    tf_asp.prune_model(model, **SETTINGS[setting], **FAST)
    zeros = {name: value == 0 for name, value in kernel_values(model).items()}
    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.SGD(0.05, momentum=0.9), model, permute=False, **SETTINGS[setting]
    )
    model.compile(optimizer=optimizer, loss="mse")
    x = images(32)
    model.fit(x, np.ones((32, 16), "float32"), batch_size=8, epochs=1, verbose=0)
    for name, value in kernel_values(model).items():
        np.testing.assert_array_equal(value == 0, zeros[name], err_msg=name)
    for mask, zero in zip(optimizer.masks, zeros.values()):
        np.testing.assert_array_equal(mask.numpy() == 0, zero)


def test_activation_pruning_then_a_magnitude_wrapper_keeps_the_zeros():
    model = small_convnet()
    tf_asp.prune_model(model, criterion="activation", calibration_data=images(), **FAST)
    zeros = {name: value == 0 for name, value in kernel_values(model).items()}
    optimizer = tf_asp.AspOptimizerWrapperV2(keras.optimizers.Adam(0.01), model, permute=False)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(images(16), np.ones((16, 16), "float32"), batch_size=8, verbose=0)
    for name, value in kernel_values(model).items():
        np.testing.assert_array_equal(value == 0, zeros[name], err_msg=name)


def test_a_tf_keras_model_is_pruned_and_kept_pruned_alike():
    import tf_keras

    model = small_convnet(api=tf_keras)
    summary = tf_asp.prune_model(
        model, pattern="1:2", criterion="activation", calibration_data=images(), **FAST
    )
    assert len(summary.kernels) == 4 and summary.permutation.groups
    assert tf_asp.check_pruned_layers(model, check_structured=True, pattern="1:2") == (4, 4)
    zeros = [v == 0 for v in kernel_values(model).values()]
    optimizer = tf_asp.AspOptimizerWrapperV2(
        tf_keras.optimizers.legacy.SGD(0.05), model, permute=False, pattern="1:2"
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(images(16), np.ones((16, 16), "float32"), batch_size=8, verbose=0)
    for value, zero in zip(kernel_values(model).values(), zeros):
        np.testing.assert_array_equal(value == 0, zero)


def test_prune_model_needs_neither_an_optimizer_nor_a_compiled_model():
    model = dense_model()
    x, _ = regression_data(model)
    before = model(x)
    tf_asp.prune_model(model)
    assert getattr(model, "optimizer", None) is None
    assert not np.allclose(before, model(x))
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (2, 2)


BAD_ARGUMENTS = [
    (dict(pattern="2/4"), "not N:M"),
    (dict(pattern="4:4"), "N must be smaller than M"),
    (dict(pattern="5:4"), "N must be smaller than M"),
    (dict(pattern="3:6"), "M must be 4, 8 or 16"),
    (dict(pattern="2:32"), "M must be 4, 8 or 16"),
    (dict(pattern="1:3"), "M must be 4, 8 or 16"),
    (dict(criterion="activation"), "needs calibration_data"),
    (dict(criterion="wanda"), "criterion='wanda'"),
    (dict(calibration_data=np.ones((4, 8, 8, 16))), "only with criterion='activation'"),
    (dict(criterion="activation", calibration_data=np.ones((4, 8, 8, 3))), "takes shape"),
    (dict(transposable=True, pattern="4:8"), "Transposable masks are 2:4"),
    (dict(transposable=True, pattern="1:2"), "Transposable masks are 2:4"),
    (dict(transposable="yes"), "transposable='yes'"),
]


@pytest.mark.parametrize("arguments, match", BAD_ARGUMENTS)
def test_bad_arguments_are_refused_before_anything_changes(arguments, match):
    model = small_convnet()
    saved = weights(model)
    with pytest.raises(ValueError, match=match):
        tf_asp.prune_model(model, **arguments)
    assert same_weights(model, saved)


@pytest.mark.parametrize("arguments, match", BAD_ARGUMENTS)
def test_the_wrapper_refuses_the_same_arguments(arguments, match):
    model = small_convnet()
    saved = weights(model)
    with pytest.raises(ValueError, match=match):
        tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.1), model, **arguments)
    assert same_weights(model, saved)


def test_transposable_masks_refuse_a_padded_kernel_of_odd_channels():
    model = keras.Sequential([keras.Input((18,)), keras.layers.Dense(16, name="odd")])
    saved = weights(model)
    with pytest.raises(ValueError, match=r"odd/kernel.*18 input.*multiples of 4"):
        tf_asp.prune_model(model, transposable=True, padding=True)
    assert same_weights(model, saved)


def test_a_model_whose_inputs_cannot_be_probed_changes_nothing():
    model = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(32, name="d"), BroadcastProjection(name="p")]
    )
    saved = weights(model)
    with pytest.raises(ValueError, match="cannot see the input"):
        tf_asp.prune_model(model, criterion="activation", calibration_data=np.ones((8, 32)))
    assert same_weights(model, saved)
