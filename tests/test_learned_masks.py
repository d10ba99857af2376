"""prune_model(criterion="learned"): one of the six 2:4 patterns per group of
4 input channels, trained on calibration data from the magnitude masks;
exactly 2:4, deterministic, better than magnitude where magnitude misleads;
bad arguments and failures change nothing."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import images
from helpers import kernel_values
from helpers import same_weights
from helpers import small_convnet
from helpers import twin
from helpers import weights

import tf_asp
from tf_asp import learned
from tf_asp import masks
from tf_asp import pruning

pytestmark = pytest.mark.usefixtures("fresh_keras")

FAST = dict(search_device="CPU", search_time_limit=5)
QUIET = np.tile([True, True, False, False], 8)  # channels 0, 1 of every group of 4


def misleading_mlp():
    """A Dense(32) -> ReLU -> Dense(16) model and 256 samples where magnitude
    pruning hurts: in every group of 4 inputs, channels 0 and 1 have 10x
    larger weights but carry 100x smaller inputs than channels 2 and 3."""
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(16, name="out"),
        ]
    )
    kernel = model.get_layer("hidden").kernel
    kernel.assign(kernel.numpy() * np.where(QUIET, 10.0, 1.0)[:, None].astype("float32"))
    x = np.random.default_rng(0).standard_normal((256, 32)).astype("float32")
    x[:, QUIET] *= 0.01
    return model, x


def distillation_loss(model, dense, x):
    return float(np.mean((model(x).numpy() - dense) ** 2))


def test_learned_masks_are_exactly_2to4_along_the_input_channels():
    model = small_convnet()
    before = kernel_values(model)
    summary = tf_asp.prune_model(
        model, criterion="learned", calibration_data=images(), learned_steps=10, **FAST
    )
    kernels = pruning.prunable_kernels(model)
    for name, value in kernel_values(model).items():
        assert masks.is_2to4(value, kernels[name].input_axes), name
        assert np.count_nonzero(value) == value.size // 2, name
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (4, 4)
    for row in summary.kernels:
        assert row.criterion == "learned" and row.pattern == "2:4"
        assert row.kept == pytest.approx(np.abs(kernel_values(model)[row.name]).sum(), rel=1e-6)
        assert row.total == pytest.approx(np.abs(before[row.name]).sum(), rel=1e-6)
    assert summary.learned.steps == 10
    assert "Learned masks (10 steps, kept step" in str(summary)


@pytest.mark.parametrize("permute", [False, True])
def test_zero_steps_give_the_magnitude_masks(permute):
    model = small_convnet()
    by_magnitude = twin(model)
    summary = tf_asp.prune_model(
        model, permute=permute, criterion="learned", calibration_data=images(), learned_steps=0
    )
    tf_asp.prune_model(by_magnitude, permute=permute)
    for (name, a), b in zip(kernel_values(model).items(), kernel_values(by_magnitude).values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert summary.learned.loss == summary.learned.magnitude_loss


def test_the_start_breaks_ties_as_the_magnitude_mask_does():
    values = np.random.default_rng(3).integers(-2, 3, size=(5, 3, 16, 8)).astype("float32")
    groups = learned.KernelGroups(values.shape, input_axes=(2,))
    logits, kept = learned.initial_logits(values, groups)
    choice = learned.best_patterns(np.float32(logits), kept)
    mask = groups.join(tf.gather(learned.pattern_matrix(), choice)).numpy()
    np.testing.assert_array_equal(mask, masks.nm_mask(values, (2,)).numpy())


def test_learned_masks_beat_magnitude_where_large_weights_read_quiet_inputs():
    model, x = misleading_mlp()
    dense = model(x).numpy()
    by_magnitude = twin(model)
    tf_asp.prune_model(by_magnitude, permute=False)
    summary = tf_asp.prune_model(model, criterion="learned", calibration_data=x, permute=False)
    learned_loss = distillation_loss(model, dense, x)
    magnitude_loss = distillation_loss(by_magnitude, dense, x)
    assert learned_loss < 0.5 * magnitude_loss
    assert summary.learned.loss == pytest.approx(learned_loss, rel=1e-4)
    assert summary.learned.magnitude_loss == pytest.approx(magnitude_loss, rel=1e-4)
    # It learned to keep many of the loud channels' weights the magnitude mask dropped.
    loud = [
        np.count_nonzero(m.get_layer("hidden").kernel.numpy()[~QUIET])
        for m in (model, by_magnitude)
    ]
    assert loud[0] > 4 * loud[1], loud


def test_learned_masks_never_lose_to_magnitude_on_the_calibration_data():
    model = small_convnet()
    x = images()
    dense = model(x).numpy()
    by_magnitude = twin(model)
    tf_asp.prune_model(by_magnitude, permute=False)
    summary = tf_asp.prune_model(
        model,
        criterion="learned",
        calibration_data=x,
        permute=False,
        learned_steps=5,
        learning_rate=10.0,  # wild steps: the masks it samples are worse
    )
    learned_loss = distillation_loss(model, dense, x)
    assert learned_loss <= distillation_loss(by_magnitude, dense, x) * (1 + 1e-5)
    assert summary.learned.loss == pytest.approx(learned_loss, rel=1e-4)
    if summary.learned.best_step == 0:
        for (name, a), b in zip(kernel_values(model).items(), kernel_values(by_magnitude).values()):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_training_shows_a_progress_bar_with_the_loss(capsys):
    model, x = misleading_mlp()
    tf_asp.prune_model(model, criterion="learned", calibration_data=x, learned_steps=12)
    printed = capsys.readouterr().out
    assert "12/12" in printed and "loss:" in printed


def test_the_same_seed_learns_the_same_masks():
    model, x = misleading_mlp()
    other = twin(model)
    tf_asp.prune_model(model, criterion="learned", calibration_data=x, learned_steps=30, seed=7)
    tf_asp.prune_model(other, criterion="learned", calibration_data=x, learned_steps=30, seed=7)
    for (name, a), b in zip(kernel_values(model).items(), kernel_values(other).values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_loss_on_targets_that_are_the_dense_outputs_learns_the_distilled_masks():
    model, x = misleading_mlp()
    other = twin(model)
    dataset = tf.data.Dataset.from_tensor_slices((x, model(x).numpy())).batch(32)
    tf_asp.prune_model(model, criterion="learned", calibration_data=x, learned_steps=20)
    summary = tf_asp.prune_model(
        other, criterion="learned", calibration_data=dataset, loss="mse", learned_steps=20
    )
    for (name, a), b in zip(kernel_values(model).items(), kernel_values(other).values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert summary.learned.loss < summary.learned.magnitude_loss


@pytest.mark.parametrize("sampling", ["hard", "soft"])
def test_a_wrapper_built_afterwards_keeps_exactly_the_learned_zeros(sampling):
    model = small_convnet()
    tf_asp.prune_model(
        model,
        criterion="learned",
        calibration_data=images(),
        learned_steps=10,
        learned_sampling=sampling,
        **FAST,
    )
    zeros = {name: value == 0 for name, value in kernel_values(model).items()}
    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.SGD(0.05, momentum=0.9), model, permute=False
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(images(32), np.ones((32, 16), "float32"), batch_size=8, epochs=1, verbose=0)
    for name, value in kernel_values(model).items():
        np.testing.assert_array_equal(value == 0, zeros[name], err_msg=name)


BAD_ARGUMENTS = [
    (dict(), "needs calibration_data"),
    (dict(pattern="4:8", calibration_data=images()), "learns 1-D 2:4 masks"),
    (dict(pattern="1:2", calibration_data=images()), "learns 1-D 2:4 masks"),
    (dict(transposable=True, calibration_data=images()), "learns 1-D 2:4 masks"),
    (dict(learned_steps=-1, calibration_data=images()), "learned_steps=-1"),
    (dict(learned_steps=2.5, calibration_data=images()), "whole number"),
    (dict(learning_rate=0.0, calibration_data=images()), "learning_rate=0.0"),
    (dict(temperature=(0.1, 1.0), calibration_data=images()), "end <= start"),
    (dict(temperature=1.0, calibration_data=images()), "give \\(start, end\\)"),
    (dict(learned_sampling="gumbel", calibration_data=images()), "'hard'"),
    (dict(loss="no_such_loss", calibration_data=images()), "not a Keras loss"),
    (dict(loss="mse", calibration_data=images()), "must hold targets"),
    (dict(calibration_data=np.ones((4, 8, 8, 3))), "takes shape"),
]


@pytest.mark.parametrize("arguments, match", BAD_ARGUMENTS)
def test_bad_arguments_are_refused_before_anything_changes(arguments, match):
    model = small_convnet()
    saved = weights(model)
    with pytest.raises(ValueError, match=match):
        tf_asp.prune_model(model, criterion="learned", **arguments, **FAST)
    assert same_weights(model, saved)


@pytest.mark.parametrize("criterion", ["magnitude", "activation"])
def test_learned_arguments_with_another_criterion_are_refused_not_ignored(criterion):
    model = small_convnet()
    saved = weights(model)
    calibration = images() if criterion == "activation" else None
    with pytest.raises(ValueError, match="learned_steps, loss only apply to criterion='learned'"):
        tf_asp.prune_model(
            model,
            criterion=criterion,
            calibration_data=calibration,
            loss="mse",
            learned_steps=5,
            permute=False,
        )
    assert same_weights(model, saved)


def test_a_loss_that_fails_mid_training_leaves_the_permuted_model_as_it_was():
    model = small_convnet()
    saved = weights(model)

    def broken(targets, outputs):
        return tf.reduce_mean(outputs) * np.float32("nan")

    with pytest.raises(ValueError, match="loss became nan"):
        tf_asp.prune_model(
            model,
            criterion="learned",
            calibration_data=(images(), np.zeros((64, 16), "float32")),
            loss=broken,
            **FAST,
        )
    assert same_weights(model, saved)


def test_odd_input_channels_with_padding_are_refused():
    model = keras.Sequential([keras.Input((18,)), keras.layers.Dense(16, name="odd")])
    saved = weights(model)
    with pytest.raises(ValueError, match=r"odd/kernel.*18 input channels.*groups of 4"):
        tf_asp.prune_model(
            model, criterion="learned", calibration_data=np.ones((8, 18)), padding=True
        )
    assert same_weights(model, saved)


def test_tf_keras_models_and_the_wrapper_are_refused_with_what_to_do():
    import tf_keras

    model = small_convnet(api=tf_keras)
    saved = weights(model)
    with pytest.raises(ValueError, match="needs a Keras 3 model"):
        tf_asp.prune_model(model, criterion="learned", calibration_data=images())
    assert same_weights(model, saved)
    model = small_convnet()
    with pytest.raises(ValueError, match="permute=False"):
        tf_asp.AspOptimizerWrapperV2(
            keras.optimizers.SGD(0.1), model, criterion="learned", calibration_data=images()
        )
