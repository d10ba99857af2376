"""`permute_model` end to end: search, apply, verify, report, and what the
permutation buys once the wrapper prunes."""

import logging

import keras
import numpy as np
import pytest
from helpers import prunable_kernels
from helpers import prunable_layer_names
from helpers import randomize_normalization

import tf_asp
from tf_asp import masks
from tf_asp.graph import PermutationSummary
from tf_asp.graph import permute_model
from tf_asp.search import find_permutation

pytestmark = pytest.mark.usefixtures("fresh_keras")

layers = keras.layers


def residual_model():
    """A small ResNet-style model: siblings share the residual stream."""
    x = keras.Input((8, 8, 16))
    stem = layers.ReLU()(
        layers.BatchNormalization(name="stem_bn")(
            layers.Conv2D(32, 3, padding="same", name="stem")(x)
        )
    )
    h = layers.ReLU()(layers.Conv2D(64, 1, name="block_1")(stem))
    h = layers.Conv2D(32, 3, padding="same", name="block_2")(h)
    y = layers.ReLU()(layers.Add()([stem, layers.BatchNormalization(name="block_bn")(h)]))
    y = layers.GlobalAveragePooling2D()(layers.Conv2D(64, 1, name="expand")(y))
    model = keras.Model(x, layers.Dense(16, name="head")(y))
    randomize_normalization(model)
    return model


def clustered(model, seed=0):
    """Kernels whose large weights cluster in a few input channels, as in
    trained models: a permutation has something to gain."""
    rng = np.random.default_rng(seed)
    for kernel in prunable_kernels(model):
        variable = kernel.variable
        scale = np.exp(rng.normal(0.0, 1.0, variable.shape[-2]))[:, None]
        values = rng.normal(0.0, 1.0, variable.shape) * scale
        variable.assign(values.astype("float32"))
    return model


def test_summary_names_groups_layers_and_skips(caplog):
    model = clustered(residual_model())
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 16)).astype("float32")
    before = np.asarray(model(x))
    with caplog.at_level(logging.INFO, logger="tf_asp"):
        summary = permute_model(model, search_device="numpy", search_time_limit=5)

    assert isinstance(summary, PermutationSummary)
    assert summary.c_permuted == ["block_1", "block_2", "expand", "head"]
    assert summary.k_permuted == ["block_1", "block_2", "expand", "stem"]
    assert [s.consumers for s in summary.skipped] == [("stem",)]
    assert "model input" in summary.skipped[0].reason
    assert summary.error <= 1e-5
    np.testing.assert_allclose(np.asarray(model(x)), before, rtol=1e-5, atol=1e-5)
    for group in summary.groups:
        assert group.magnitude >= group.identity_magnitude
        assert group.backend and group.duration >= 0
        assert f"group {group.id}: C-permuted" in str(summary)
        assert any(f"group {group.id}: C-permuted" in r.message for r in caplog.records)
    assert any(g.efficacy > 0 for g in summary.groups)
    assert str(summary).startswith("Channel permutation for 2:4: 3 groups, 4 layers C-permuted")
    assert "skipped (stem): model input" in str(summary)


def test_error_during_search_leaves_the_model_untouched():
    model = clustered(residual_model())
    weights = [v.numpy() for v in model.weights]
    calls = []

    def failing_second_search(matrix, **options):
        calls.append(matrix.shape)
        if len(calls) == 2:
            raise RuntimeError("search failed")
        return find_permutation(matrix, **options)

    with pytest.raises(RuntimeError, match="search failed"):
        permute_model(
            model, search_device="numpy", search_time_limit=5, search=failing_second_search
        )
    assert len(calls) == 2
    for saved, variable in zip(weights, model.weights):
        np.testing.assert_array_equal(saved, variable.numpy())


def test_no_verification_when_turned_off():
    summary = permute_model(
        clustered(residual_model()), search_device="numpy", search_time_limit=5, verify=False
    )
    assert summary.error is None and "not verified" in str(summary)


def test_plot_through_permute_model(tmp_path):
    permute_model(
        residual_model(),
        search_device="numpy",
        search_time_limit=1,
        plot_to_file=tmp_path / "model.dot",
    )
    text = (tmp_path / "model.dot").read_text()
    assert "[K,C] S" in text and "fillcolor=orange" in text


def kept_by_mask(kernel):
    kernel = np.asarray(kernel)
    return float(np.abs(kernel * np.asarray(masks.mask_2to4(kernel))).sum())


def test_wrapped_step_prunes_2to4_and_keeps_at_least_the_unpermuted_magnitude():
    """After permutation and one training step every prunable kernel is 2:4,
    and keeps at least the magnitude it would keep unpermuted, layer by
    layer. Learning rate 0: the step only applies the masks."""
    model = clustered(residual_model())
    prunable = {name: model.get_layer(name).kernel.numpy() for name in prunable_layer_names(model)}
    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.SGD(0.0), model, search_device="numpy", search_time_limit=5
    )
    assert optimizer.permutation_summary.c_permuted == ["block_1", "block_2", "expand", "head"]
    model.compile(optimizer=optimizer, loss="mse")
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 16)).astype("float32")
    model.fit(x, np.zeros((4, 16), "float32"), epochs=1, verbose=0)

    gained = 0.0
    for name, original in prunable.items():
        kernel = model.get_layer(name).kernel.numpy()
        assert masks.is_2to4(kernel), name
        kept, unpermuted = float(np.abs(kernel).sum()), kept_by_mask(original)
        assert kept >= unpermuted * (1 - 1e-6), name
        gained += kept - unpermuted
    assert gained > 0


@pytest.mark.slow
def test_resnet50_permutes_at_least_90_percent_of_prunable_layers():
    model = keras.applications.ResNet50(weights=None)
    randomize_normalization(model)
    summary = permute_model(model, search_device="numpy", search_time_limit=0.5)
    prunable = prunable_layer_names(model)
    print(f"ResNet50: {len(summary.c_permuted)}/{len(prunable)} prunable layers C-permuted")
    assert set(summary.c_permuted) <= set(prunable)
    assert len(summary.c_permuted) >= 0.9 * len(prunable)
    assert summary.error <= 1e-5


@pytest.mark.parametrize("pattern", ["1:2", "4:8", "8:16"])
def test_the_search_optimizes_the_pattern_it_is_given(pattern):
    model = clustered(residual_model())
    seen = []

    def recording_search(matrix, **options):
        seen.append(str(options["pattern"]))
        return find_permutation(matrix, **options)

    summary = permute_model(
        model, search_device="numpy", search_time_limit=5, search=recording_search, pattern=pattern
    )
    assert seen and set(seen) == {pattern}
    assert str(summary.pattern) == pattern and str(summary).startswith(
        f"Channel permutation for {pattern}:"
    )
    for group in summary.groups:
        assert group.magnitude >= group.identity_magnitude


def test_segments_that_are_not_multiples_of_m_skip_their_group():
    inputs = keras.Input((8, 16))
    h = layers.Dense(16, name="embed")(inputs)
    a = layers.MultiHeadAttention(4, 4, name="attention")(h, h)  # heads of 4 channels
    model = keras.Model(inputs, layers.Dense(16, name="head")(layers.Add()([h, a])))
    summary = permute_model(model, search_device="numpy", search_time_limit=5, pattern="4:8")
    reasons = {s.consumers: s.reason for s in summary.skipped}
    assert "segments of 4x4 channels are not all multiples of 8" in reasons[("attention_output",)]
    two_four = permute_model(model, search_device="numpy", search_time_limit=5)
    assert ("attention_output",) not in {s.consumers for s in two_four.skipped}


def test_input_scales_weigh_the_columns_the_search_sees():
    model = clustered(residual_model())
    head = model.get_layer("head").kernel
    original = head.numpy()
    scales = {id(head): np.geomspace(1e-3, 1e3, 64)}
    seen = []

    def recording_search(matrix, **options):
        seen.append(matrix)
        return find_permutation(matrix, **options)

    permute_model(
        model,
        search_device="numpy",
        search_time_limit=5,
        search=recording_search,
        input_scales=scales,
    )
    head_matrix = next(m for m in seen if m.shape == (16, 64))
    np.testing.assert_allclose(head_matrix, np.abs(original).T * scales[id(head)], rtol=1e-6)
