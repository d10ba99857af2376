"""ONNX export: the exported file computes what the SavedModel computes, keeps
every 2:4 zero, and reports like the SavedModel it came from.

Real tf2onnx, onnx and onnxruntime throughout; the demo model (main.py) is
fine-tuned once per session (`demo` and `demo_onnx` in conftest.py).
"""

import os
import re

import keras
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from helpers import last_line
from helpers import load_script
from helpers import run_command

from tf_asp import masks
from tf_asp.export import export_onnx
from tf_asp.report import sparsity_report
from tf_asp.report.onnx import load_onnx
from tf_asp.report.onnx import onnx_kernels
from tf_asp.report.serving_graph import savedmodel_kernels


def without_names(report):
    """A report's rows as comparable tuples, names left out, in a fixed order."""
    return sorted(
        (row.shape, row.zero_fraction, row.is_2to4, row.shape_qualifies, row.reason)
        for row in report.rows
    )


def onnx_outputs(onnx_path, **inputs):
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def pruned_transformer():
    """MultiHeadAttention, EinsumDense, Conv1D, Conv2D and Dense, every kernel
    pruned to 2:4 along its contracted (input-channel) axes."""
    tokens = keras.Input((8, 32), name="tokens")
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16, name="attention")
    x = attention(tokens, tokens)
    x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 64), name="einsum")(x)
    x = keras.layers.Conv1D(32, 3, padding="same", name="conv1d")(x)
    x = keras.layers.Reshape((8, 1, 32))(x)
    x = keras.layers.Conv2D(32, 1, name="conv2d")(x)
    outputs = keras.layers.Dense(16, name="dense")(keras.layers.Flatten()(x))
    model = keras.Model(tokens, outputs)
    # (variable, number of leading contracted axes; None: input channels on axis -2)
    kernels = [
        (attention.query_dense.kernel, 1),  # (C, heads, head_dim)
        (attention.key_dense.kernel, 1),
        (attention.value_dense.kernel, 1),
        (attention.output_dense.kernel, 2),  # (heads, head_dim, K)
        (model.get_layer("einsum").kernel, 1),
        (model.get_layer("conv1d").kernel, None),  # (W, C, K)
        (model.get_layer("conv2d").kernel, None),
        (model.get_layer("dense").kernel, None),
    ]
    for variable, contracted in kernels:
        weights = variable.numpy()
        if contracted is None:
            mask = masks.mask_2to4(weights).numpy()
        else:
            gemm = weights.reshape(int(np.prod(weights.shape[:contracted])), -1)
            mask = masks.mask_2to4(gemm).numpy().reshape(weights.shape)
        variable.assign(weights * mask)
    return model


# The demo model --------------------------------------------------------------


def test_onnx_runtime_computes_what_the_savedmodel_computes(demo, demo_onnx):
    _, path = demo
    images = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    expected = tf.saved_model.load(path).signatures["serving_default"](image=images)
    outputs = onnx_outputs(demo_onnx, image=images)
    assert outputs.keys() == expected.keys() == {"output_0"}
    assert np.max(np.abs(outputs["output_0"] - expected["output_0"].numpy())) <= 1e-4


def test_onnx_report_matches_the_savedmodel_report(demo, demo_onnx):
    _, path = demo
    from_savedmodel = sparsity_report(path, print_table=False)
    from_onnx = sparsity_report(demo_onnx, print_table=False)
    assert without_names(from_onnx) == without_names(from_savedmodel)
    assert from_onnx.summary() == from_savedmodel.summary()
    assert from_onnx.summary().startswith("3 of 5 kernels are 2:4 with a sparse-Tensor-Core shape")
    assert len(from_onnx.sparse_ready) == 3


def test_every_2to4_zero_survives_bit_for_bit(demo, demo_onnx):
    # Kernel shapes are unique in the demo, so shape pairs each SavedModel
    # kernel with its ONNX weight.
    _, path = demo
    served = {k.weights.shape: k for k in savedmodel_kernels(tf.saved_model.load(path))}
    exported = {k.weights.shape: k for k in onnx_kernels(load_onnx(demo_onnx))}
    assert served.keys() == exported.keys() and len(served) == 5
    for shape, kernel in served.items():
        weights, onnx_weights = kernel.weights, exported[shape].weights
        np.testing.assert_array_equal(onnx_weights == 0, weights == 0, kernel.name)
        if kernel.name.startswith(("dense", "logits")):  # MatMul weights: unchanged
            np.testing.assert_array_equal(onnx_weights.view(np.uint32), weights.view(np.uint32))
        else:  # Conv filters: the next BatchNormalization's scale folded in per output
            kept = weights != 0
            scale = onnx_weights[kept] / weights[kept]
            outputs = np.broadcast_to(np.arange(shape[-1]), shape)[kept]
            for k in range(shape[-1]):
                np.testing.assert_allclose(scale[outputs == k], scale[outputs == k][0], rtol=1e-5)


def test_keras_file_and_live_model_export_like_the_savedmodel(demo, demo_onnx, tmp_path):
    model, _ = demo
    model.save(tmp_path / "pruned.keras")
    from_file = export_onnx(tmp_path / "pruned.keras", tmp_path / "from_file.onnx")
    from_model = export_onnx(model, tmp_path / "from_model.onnx")
    expected = without_names(sparsity_report(demo_onnx, print_table=False))
    assert without_names(from_file) == without_names(from_model) == expected
    images = np.random.default_rng(1).random((4, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(
        onnx_outputs(str(tmp_path / "from_model.onnx"), image=images)["output_0"],
        model(images, training=False).numpy(),
        atol=1e-4,
    )


# Transformers: kernels the way serving multiplies by them -------------------


def test_savedmodel_and_onnx_reports_agree_on_attention_einsum_and_conv1d(tmp_path):
    model = pruned_transformer()
    model.export(tmp_path / "saved", verbose=False)
    from_savedmodel = sparsity_report(str(tmp_path / "saved"), print_table=False)
    from_onnx = export_onnx(str(tmp_path / "saved"), tmp_path / "model.onnx")

    assert {row.name: row.shape for row in from_savedmodel.rows} == {
        "attention/query/kernel": (32, 32),  # (C, heads, head_dim) as its MatMul sees it
        "attention/key/kernel": (32, 32),
        "attention/value/kernel": (32, 32),
        "attention/attention_output/kernel": (32, 32),  # (heads, head_dim, K)
        "einsum/kernel": (32, 64),
        "conv1d/kernel": (1, 3, 64, 32),  # (W, C, K) as a Conv2D filter
        "conv2d/kernel": (1, 1, 32, 32),
        "dense/kernel": (256, 16),
    }
    assert all(row.is_2to4 and row.zero_fraction == 0.5 for row in from_savedmodel.rows)
    assert without_names(from_onnx) == without_names(from_savedmodel)
    tokens = np.random.default_rng(0).random((4, 8, 32), dtype=np.float32)
    np.testing.assert_allclose(
        onnx_outputs(str(tmp_path / "model.onnx"), tokens=tokens)["output_0"],
        model(tokens, training=False).numpy(),
        atol=1e-4,
    )


@pytest.mark.slow
def test_mobilenet_reports_alike_as_keras_model_savedmodel_and_onnx(tmp_path):
    # Depthwise convolutions (ONNX Conv with one channel per group) stay out
    # of all three; BatchNormalization folds into the ONNX Conv filters.
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if type(layer) in (keras.layers.Conv2D, keras.layers.Dense):
            if kernel.shape[-2] % 16 == 0 and kernel.shape[-1] % 8 == 0:
                kernel.assign(kernel * masks.mask_2to4(kernel))
    model.export(tmp_path / "saved", verbose=False)
    from_model = sparsity_report(model, print_table=False)
    from_savedmodel = sparsity_report(str(tmp_path / "saved"), print_table=False)
    from_onnx = export_onnx(str(tmp_path / "saved"), tmp_path / "model.onnx")
    assert without_names(from_onnx) == without_names(from_savedmodel) == without_names(from_model)
    assert from_onnx.summary().startswith("33 of 36 kernels are 2:4")


def test_savedmodel_report_lists_variables_when_no_gemm_reads_one_and_says_so(tmp_path, caplog):
    class EinsumOnly(tf.Module):  # tf.einsum stays an Einsum op: no MatMul reads the kernel
        def __init__(self):
            self.kernel = tf.Variable(np.ones((16, 8), np.float32), name="kernel")

        @tf.function(input_signature=[tf.TensorSpec((None, 16), tf.float32)])
        def __call__(self, x):
            return tf.einsum("bc,ck->bk", x, self.kernel)

    module = EinsumOnly()
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures=module.__call__)
    with caplog.at_level("WARNING", logger="tf_asp"):
        report = sparsity_report(str(tmp_path / "saved"), print_table=False)
    assert [(row.name, row.shape) for row in report.rows] == [("kernel", (16, 8))]
    assert "listing every 2-D and 4-D float variable instead" in caplog.text


def test_a_tf_function_with_an_input_signature_exports(tmp_path):
    dense = keras.layers.Dense(16, name="dense")
    dense.build((None, 32))
    dense.kernel.assign(dense.kernel * masks.mask_2to4(dense.kernel))

    @tf.function(input_signature=[tf.TensorSpec((None, 32), tf.float32, name="x")])
    def serve(x):
        return {"y": dense(x)}

    report = export_onnx(serve, tmp_path / "serve.onnx")
    assert [(row.shape, row.is_2to4) for row in report.rows] == [((32, 16), True)]
    x = np.ones((2, 32), np.float32)
    np.testing.assert_allclose(
        onnx_outputs(str(tmp_path / "serve.onnx"), x=x)["y"], dense(x).numpy(), atol=1e-5
    )
    with pytest.raises(ValueError, match="needs a tf.function with an input_signature"):
        export_onnx(tf.function(lambda x: x), tmp_path / "other.onnx")


# Refusals: one sentence, nothing written ------------------------------------


def test_export_refuses_a_fold_that_fills_in_2to4_zeros_and_writes_nothing(tmp_path):
    # Grappler folds the per-channel scale after the convolution into its
    # filter; an infinite scale turns that channel's zeros into NaN.
    image = keras.Input((8, 8, 16), name="image")
    conv = keras.layers.Conv2D(32, 3, use_bias=False, name="conv")
    scale = np.ones(32, np.float32)
    scale[5] = np.inf
    scaled = keras.layers.Lambda(lambda x: x * tf.constant(scale), name="scale")(conv(image))
    model = keras.Model(image, scaled)
    conv.kernel.assign(conv.kernel * masks.mask_2to4(conv.kernel))

    with pytest.raises(ValueError) as refusal:
        export_onnx(model, tmp_path / "model.onnx")
    message = str(refusal.value)
    assert re.search(r"The 2:4 kernel 'conv/kernel' .* lost its zeros", message)
    assert re.search(r"ONNX node '[^']*scale[^']*'", message)  # the node it was folded into
    assert message.count(". ") == 0
    assert os.listdir(tmp_path) == []


def test_export_refuses_an_op_tf2onnx_cannot_convert_and_writes_nothing(tmp_path):
    x = keras.Input((16,), name="x")
    y = keras.layers.Lambda(lambda t: tf.math.bessel_i0e(t), name="bessel")(x)
    model = keras.Model(x, keras.layers.Dense(8)(y))
    with pytest.raises(ValueError, match="tf2onnx could not convert .*BesselI0e"):
        export_onnx(model, tmp_path / "model.onnx")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "make_model, onnx_name, message",
    [
        (lambda tmp: tmp / "missing", "out.onnx", "the path does not exist"),
        (lambda tmp: tmp / "notes.txt", "out.onnx", "is neither a SavedModel directory"),
        (lambda tmp: tmp, "out.onnx", "is neither a SavedModel directory"),
        (lambda tmp: tmp / "notes.txt", "missing_dir/out.onnx", "does not exist"),
        (lambda tmp: tmp / "notes.txt", "out.txt", "must end with .onnx"),
    ],
    ids=["missing model", "a text file", "a plain directory", "no output dir", "not .onnx"],
)
def test_export_command_line_refuses_bad_paths_in_one_sentence(
    tmp_path, make_model, onnx_name, message
):
    (tmp_path / "notes.txt").write_text("not a model")
    result = run_command(
        "-m", "tf_asp.export", make_model(tmp_path), "--onnx", tmp_path / onnx_name
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith("python -m tf_asp.export: error: ")
    assert message in last_line(result.stderr)
    assert last_line(result.stderr).count(". ") == 0
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_export_command_line_writes_the_file_and_prints_its_report(demo, tmp_path):
    _, path = demo
    result = run_command("-m", "tf_asp.export", path, "--onnx", tmp_path / "model.onnx")
    assert result.returncode == 0, result.stderr
    assert "Sparsity report of" in result.stdout
    assert "3 of 5 kernels are 2:4" in result.stdout
    assert last_line(result.stdout) == f"Wrote {tmp_path / 'model.onnx'}"
    assert "warning" not in result.stderr


def test_exporting_a_model_with_no_2to4_kernel_says_so_in_one_sentence(tmp_path):
    model = load_script("main").build_model()  # not pruned
    model.export(tmp_path / "dense", verbose=False)
    result = run_command("-m", "tf_asp.export", tmp_path / "dense", "--onnx", tmp_path / "d.onnx")
    assert result.returncode == 0, result.stderr
    warning = last_line(result.stderr)
    assert warning.startswith("python -m tf_asp.export: warning: no kernel of")
    assert "is 2:4" in warning and warning.count(". ") == 0
    assert "0 of 5 kernels are 2:4" in result.stdout


# The report command line on ONNX files ---------------------------------------


def test_report_command_line_reads_an_onnx_file(demo_onnx):
    result = run_command("-m", "tf_asp.report", demo_onnx)
    assert result.returncode == 0, result.stderr
    assert re.search(r"dense_1/\S+ +\(64, 128\) +50\.0% +yes +yes", result.stdout)
    assert "3 of 5 kernels are 2:4" in result.stdout


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.onnx", None, "No ONNX model at"),
        ("notes.onnx", "not a model", "is not an ONNX model"),
        ("notes.txt", "not a model", "nor an .h5, .keras or .onnx file"),
    ],
    ids=["missing", "text named .onnx", "text file"],
)
def test_report_command_line_refuses_what_is_not_onnx_in_one_sentence(
    tmp_path, name, content, message
):
    if content is not None:
        (tmp_path / name).write_text(content)
    result = run_command("-m", "tf_asp.report", tmp_path / name)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert message in last_line(result.stderr)
    assert last_line(result.stderr).count(". ") == 0
