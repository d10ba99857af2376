"""Counts and reports cover every GEMM layer: the ones tf_asp prunes (attention
included) and the ones it leaves dense, each named with its reason."""

import logging

import keras
import numpy as np
import pytest

import tf_asp
from tf_asp import masks
from tf_asp import registry
from tf_asp.report import sparsity_report

pytestmark = pytest.mark.usefixtures("fresh_keras")

layers = keras.layers


def encoder(length=16, width=64, heads=4):
    """Dense -> MultiHeadAttention -> LayerNorm -> Dense(gelu) -> Dense -> LayerNorm."""
    x = keras.Input((length, 32))
    h = layers.Dense(width, name="embed")(x)
    a = layers.MultiHeadAttention(heads, width // heads, name="attention")(h, h)
    h = layers.LayerNormalization(name="norm_1")(layers.Add()([h, a]))
    f = layers.Dense(4 * width, activation="gelu", name="ffn_in")(h)
    h = layers.LayerNormalization(name="norm_2")(
        layers.Add()([h, layers.Dense(width, name="ffn_out")(f)])
    )
    return keras.Model(x, layers.Dense(10, name="head")(h))  # 10 outputs: stays dense


def fine_tune(model, steps=2, **options):
    options.setdefault("search_device", "numpy")
    optimizer = tf_asp.AspOptimizerWrapperV2(keras.optimizers.Adam(1e-3), model, **options)
    model.compile(optimizer=optimizer, loss="mse")
    x = np.random.default_rng(0).standard_normal((4,) + model.input_shape[1:]).astype("float32")
    model.fit(x, np.zeros((4,) + model.output_shape[1:], "float32"), epochs=steps, verbose=0)
    return optimizer


def test_attention_kernels_are_pruned_2to4_along_their_contracted_axes():
    model = encoder()
    fine_tune(model)
    gemms = {g.name: g.layer for g in registry.gemm_layers(model)}
    for name, input_axes in [
        ("query", (0,)),
        ("key", (0,)),
        ("value", (0,)),
        ("attention_output", (0, 1)),
    ]:
        kernel = gemms[name].kernel.numpy()
        assert masks.is_2to4(kernel, input_axes), name
        assert np.count_nonzero(kernel) == kernel.size // 2, name
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (7, 8)


def test_the_count_includes_gemm_layers_tf_asp_does_not_prune(capsys):
    x = keras.Input((8, 8, 32))
    up = layers.Conv2DTranspose(32, 3, name="upsample")(x)
    model = keras.Model(x, layers.Conv2D(32, 3, name="conv")(up))
    fine_tune(model, permute=False)
    assert tf_asp.check_pruned_layers(model, check_structured=True, show_all=True) == (1, 2)
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "dense: transposed convolutions are not supported" in lines["upsample"]
    assert "2:4=yes" in lines["conv"] and "dense:" not in lines["conv"]


def test_wrapper_logs_and_summary_name_the_layers_that_stay_dense(caplog):
    with caplog.at_level(logging.INFO, logger="tf_asp"):
        optimizer = tf_asp.AspOptimizerWrapperV2(
            keras.optimizers.SGD(), encoder(), search_device="numpy"
        )
    reason = "output dim 10 of kernel (64, 10) is not a multiple of 8"
    assert optimizer.permutation_summary.dense_layers == (("head", reason),)
    assert f"head stays dense: {reason}" in str(optimizer.permutation_summary)
    logged = [r.getMessage() for r in caplog.records]
    assert f"1 GEMM layers stay dense: head ({reason})" in logged


def test_summary_and_log_list_unprunable_gemm_layers_with_their_reasons(caplog):
    x = keras.Input((24,))
    h = layers.Dense(64, name="narrow_input")(x)  # 24 inputs: not a multiple of 16
    model = keras.Model(x, layers.Dense(12, name="odd_output")(h))  # 12 outputs
    with caplog.at_level(logging.INFO, logger="tf_asp"):
        with pytest.warns(UserWarning, match="no prunable GEMM layer"):
            optimizer = tf_asp.AspOptimizerWrapperV2(
                keras.optimizers.SGD(), model, search_device="numpy"
            )
    reasons = dict(optimizer.permutation_summary.dense_layers)
    assert reasons == {
        "narrow_input": "input dim 24 of kernel (24, 64) is not a multiple of 16 "
        "(padding=True would prune it)",
        "odd_output": "output dim 12 of kernel (64, 12) is not a multiple of 8",
    }
    assert "narrow_input stays dense: input dim 24" in str(optimizer.permutation_summary)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "2 GEMM layers stay dense: narrow_input (input dim 24" in logged


def test_report_of_a_keras_model_checks_each_kernel_along_its_own_input_axes():
    model = encoder()
    fine_tune(model)
    report = sparsity_report(model, print_table=False)
    rows = {row.name: row for row in report.rows}
    assert len(rows) == len(registry.gemm_layers(model)) == 8
    assert rows["attention/attention_output/kernel"].shape == (4, 16, 64)
    assert all(row.is_2to4 for name, row in rows.items() if not name.startswith("head"))
    assert not rows["head/kernel"].is_2to4 and "output dim 10" in rows["head/kernel"].reason
