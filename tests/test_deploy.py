"""Deployment: main.py exports a SavedModel that serves the fine-tuned model,
the sparsity report proves its 2:4 structure, and tftrt_infer.py serves it.

The demo runs once per test session (a few fine-tuning steps, `demo` in
conftest.py); the command lines run in subprocesses, as a user would run them.
"""

import re
import statistics
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import last_line
from helpers import load_script
from helpers import prunable_kernels
from helpers import run_command

from tf_asp import masks
from tf_asp import registry
from tf_asp.report import sparsity_report

pytestmark = pytest.mark.usefixtures("fresh_keras")


def prunable_kernel_paths(model):
    """Paths of the kernels main.py prunes (it wraps with padding=True)."""
    return {k.variable.path for k in prunable_kernels(model, padding=True)}


# Export -----------------------------------------------------------------


def test_exported_savedmodel_computes_what_the_fine_tuned_model_computes(demo):
    model, path = demo
    images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    loaded = tf.saved_model.load(path)
    served = loaded.serve(images)
    np.testing.assert_allclose(
        served.numpy(), model(images, training=False).numpy(), rtol=1e-5, atol=1e-5
    )


def test_exported_savedmodel_holds_the_model_variables_and_nothing_of_the_optimizer(
    demo,
):
    model, path = demo
    saved = {v.name.removesuffix(":0") for v in tf.saved_model.load(path).variables}
    assert saved == {v.path for v in model.variables}
    optimizer_paths = {v.path for v in model.optimizer.variables}
    assert optimizer_paths and not optimizer_paths & saved


def test_keras_file_continues_fine_tuning_with_the_same_masks(demo, tmp_path):
    model, _ = demo
    model.save(tmp_path / "pruned.keras")
    loaded = keras.models.load_model(tmp_path / "pruned.keras")
    pruned = prunable_kernel_paths(model)
    zeros_before = {v.path: v.numpy() == 0 for v in loaded.trainable_variables if v.path in pruned}
    images, labels = load_script("main").generated_data(32, seed=1)
    loaded.fit(images, labels, batch_size=16, epochs=1, verbose=0)

    assert type(loaded.optimizer).__name__ == "AspOptimizerWrapperV2"
    assert int(loaded.optimizer.iterations) == 3 + 2
    zeros_after = {v.path: v.numpy() == 0 for v in loaded.trainable_variables if v.path in pruned}
    assert zeros_before.keys() == pruned
    for path in pruned:
        np.testing.assert_array_equal(zeros_after[path], zeros_before[path], path)
        assert masks.is_2to4(loaded.get_layer(path.split("/")[0]).kernel)


# Sparsity report ----------------------------------------------------------


def test_report_of_the_savedmodel_marks_every_prunable_kernel_2to4_and_no_other(
    demo,
):
    model, path = demo
    report = sparsity_report(path, print_table=False)
    is_2to4 = {row.name: row.is_2to4 for row in report.rows}
    pruned = prunable_kernel_paths(model)
    kernels = {k.variable.path for g in registry.gemm_layers(model) for k in g.kernels}
    assert pruned and kernels - pruned  # both kinds are present
    assert is_2to4 == {name: name in pruned for name in kernels}
    for row in report.rows:
        assert row.zero_fraction == (0.5 if row.name in pruned else 0.0)


def test_report_of_the_savedmodel_agrees_with_the_report_of_the_model(demo):
    model, path = demo
    from_model = sparsity_report(model, print_table=False)
    from_savedmodel = sparsity_report(path, print_table=False)
    assert from_savedmodel.rows == from_model.rows
    assert [row.name for row in from_savedmodel.sparse_ready] == [
        "conv2d_1/kernel",
        "conv2d_2/kernel",
        "dense/kernel",
    ]


def test_report_reads_a_savedmodel_written_by_tf_saved_model_save(demo, tmp_path):
    model, _ = demo
    tf.saved_model.save(model, str(tmp_path / "saved"))
    from_savedmodel = sparsity_report(str(tmp_path / "saved"), print_table=False)
    from_model = sparsity_report(model, print_table=False)
    assert sorted(from_savedmodel.rows, key=lambda row: row.name) == sorted(
        from_model.rows, key=lambda row: row.name
    )


def test_report_reads_a_keras_file_without_its_optimizer(demo, tmp_path):
    model, _ = demo
    model.save(tmp_path / "pruned.keras")
    from_file = sparsity_report(str(tmp_path / "pruned.keras"), print_table=False)
    assert from_file.rows == sparsity_report(model, print_table=False).rows


def test_report_judges_tensor_core_shapes_of_saved_kernels_as_the_pruner_does(
    tmp_path,
):
    # (input dim, output dim): only multiples of 16 and 8 qualify.
    dims = [(16, 8), (32, 24), (16, 12), (20, 8), (8, 16), (48, 4)]
    inputs = [keras.Input((4, 4, c)) for c, _ in dims]
    outputs = []
    for x, (c, k) in zip(inputs, dims):
        conv = keras.layers.Conv2D(k, 3, name=f"conv_{c}_{k}")(x)
        dense = keras.layers.Dense(k, name=f"dense_{c}_{k}")(x)
        outputs += [keras.layers.Flatten()(conv), keras.layers.Flatten()(dense)]
    model = keras.Model(inputs, keras.layers.Concatenate()(outputs))
    pruned = model.get_layer("dense_32_24").kernel
    pruned.assign(pruned * masks.mask_2to4(pruned))
    model.export(tmp_path / "shapes", verbose=False)

    from_model = sparsity_report(model, print_table=False)
    from_savedmodel = sparsity_report(str(tmp_path / "shapes"), print_table=False)
    qualifies = {row.name: row.shape_qualifies for row in from_savedmodel.rows}
    assert qualifies == {row.name: row.shape_qualifies for row in from_model.rows}
    assert {name for name, ok in qualifies.items() if ok} == {
        "conv_16_8/kernel",
        "dense_16_8/kernel",
        "conv_32_24/kernel",
        "dense_32_24/kernel",
    }
    assert [row.name for row in from_savedmodel.rows if row.is_2to4] == ["dense_32_24/kernel"]
    reasons = {row.name: row.reason for row in from_savedmodel.rows}
    assert "output dim 12" in reasons["dense_16_12/kernel"]
    assert "input dim 20" in reasons["conv_20_8/kernel"]


def test_report_prints_a_table_and_a_summary(demo, capsys):
    _, path = demo
    sparsity_report(path)
    table = capsys.readouterr().out
    assert re.search(r"conv2d_1/kernel +\(3, 3, 32, 64\) +50\.0% +yes +yes", table)
    assert re.search(r"logits/kernel .* no +no: output dim 10", table)
    assert last_line(table).startswith("3 of 5 kernels are 2:4 with a sparse-Tensor-Core shape;")


def test_report_command_line_prints_the_table(demo):
    _, path = demo
    result = run_command("-m", "tf_asp.report", path)
    assert result.returncode == 0, result.stderr
    assert "dense/kernel" in result.stdout
    assert "3 of 5 kernels are 2:4" in result.stdout


@pytest.mark.parametrize(
    "make_path, error, message",
    [
        (lambda tmp: tmp / "missing", FileNotFoundError, "does not exist"),
        (lambda tmp: tmp, ValueError, "is not a SavedModel directory"),
        (lambda tmp: tmp / "weights.txt", ValueError, "is not a SavedModel"),
    ],
    ids=["missing path", "plain directory", "plain file"],
)
def test_report_rejects_a_path_that_is_not_a_savedmodel(tmp_path, make_path, error, message):
    (tmp_path / "weights.txt").write_text("not a model")
    with pytest.raises(error, match=message):
        sparsity_report(make_path(tmp_path))


def test_report_rejects_what_is_neither_a_model_nor_a_path():
    with pytest.raises(TypeError, match="takes a Keras model or the path"):
        sparsity_report(42)


def test_report_rejects_an_unbuilt_model():
    model = keras.Sequential([keras.layers.Dense(8)])
    with pytest.raises(ValueError, match="is not built"):
        sparsity_report(model)


@pytest.mark.parametrize("command", ["report", "tftrt_infer"])
@pytest.mark.parametrize(
    "path, message",
    [
        ("does/not/exist", "the path does not exist"),
        ("tests", "is not a SavedModel directory"),
    ],
    ids=["missing path", "not a SavedModel"],
)
def test_command_lines_reject_a_bad_path_with_one_sentence(command, path, message):
    if command == "report":
        result = run_command("-m", "tf_asp.report", path)
    else:
        result = run_command("tftrt_infer.py", "--use_native_tensorflow", "--saved_model_dir", path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert message in last_line(result.stderr)
    assert last_line(result.stderr).count(". ") == 0  # one sentence


# tftrt_infer.py ------------------------------------------------------------


def test_native_serving_reports_structure_then_median_throughput(demo):
    _, path = demo
    result = run_command(
        "tftrt_infer.py",
        "--use_native_tensorflow",
        "--saved_model_dir",
        path,
        *("--batch_size", 8, "--warmup", 2, "--iterations", 5, "--runs", 3),
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Sparse Tensor Cores can run: conv2d_1/kernel, conv2d_2/kernel, dense/kernel" in out
    assert out.index("Sparsity report") < out.index("Average throughput")
    runs = [float(t) for t in re.findall(r"run \d: ([\d.]+) samples/sec", out)]
    average = re.search(r"Average throughput: ([\d.]+) samples/sec", out)
    assert len(runs) == 3 and min(runs) > 0
    assert float(average.group(1)) == statistics.median(runs)


def test_throughput_excludes_warmup_and_counts_every_timed_batch():
    tftrt_infer = load_script("tftrt_infer")
    calls = []

    def serve(image):  # warm-up batches are slow (like a first call), 0.25 s
        calls.append(len(calls))
        time.sleep(0.25 if len(calls) <= 3 else 0.002)
        return {"output_0": image * 2.0}

    throughputs = tftrt_infer.measure_throughput(
        serve, {"image": tf.ones((4, 2))}, 4, warmup=3, iterations=5, runs=2
    )
    assert len(calls) == 3 + 5 * 2
    assert len(throughputs) == 2
    # 4 samples per ~2 ms batch is ~2000 samples/sec; counting one warm-up
    # batch would bring a run under 4 * 5 / 0.25 = 80.
    assert all(200 < t < 2000 for t in throughputs)


@pytest.mark.parametrize(
    "environ, enabled",
    [({}, True), ({"TF_TRT_SPARSE_MODE": "1"}, True), ({"TF_TRT_SPARSE_MODE": "0"}, False)],
)
def test_sparse_compute_is_on_unless_tf_trt_sparse_mode_is_0(environ, enabled):
    assert load_script("tftrt_infer").sparse_mode_enabled(environ) is enabled


def test_a_malformed_tf_trt_sparse_mode_is_an_error():
    with pytest.raises(ValueError, match="TF_TRT_SPARSE_MODE must be an integer"):
        load_script("tftrt_infer").sparse_mode_enabled({"TF_TRT_SPARSE_MODE": "on"})


needs_tftrt = pytest.mark.skipif(
    not load_script("tftrt_infer").tftrt_missing(),
    reason="TensorRT and a GPU are present: TF-TRT runs instead of failing",
)
tftrt_removed = load_script("tftrt_infer").tftrt_removed(tf.__version__)


@pytest.mark.skipif(not tftrt_removed, reason="TensorFlow <= 2.17 may still have TF-TRT")
def test_tftrt_mode_on_tensorflow_2_18_or_later_says_it_is_gone_in_one_sentence(demo):
    _, path = demo
    result = run_command("tftrt_infer.py", "--use_tftrt_model", "--saved_model_dir", path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Sparsity report" in result.stdout  # the structure is checked first
    message = last_line(result.stderr)
    assert message.startswith("tftrt_infer.py: error: TF-TRT no longer exists in TensorFlow 2.18")
    assert f"(this is {tf.__version__})" in message
    assert "--use_tensorrt --onnx_model" in message
    assert message.count(". ") == 0


@pytest.mark.parametrize(
    "version, removed", [("2.17.1", False), ("2.18.0", True), ("2.21.0", True)]
)
def test_tftrt_is_gone_from_tensorflow_2_18(version, removed):
    assert load_script("tftrt_infer").tftrt_removed(version) is removed


@pytest.mark.skipif(tftrt_removed, reason="TensorFlow 2.18 and later say TF-TRT is gone instead")
@needs_tftrt
def test_tftrt_mode_without_tensorrt_or_gpu_exits_with_one_sentence(demo):
    _, path = demo
    result = run_command("tftrt_infer.py", "--use_tftrt_model", "--saved_model_dir", path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Sparsity report" in result.stdout  # the structure is checked first
    message = last_line(result.stderr)
    assert message.startswith("tftrt_infer.py: error: TF-TRT needs TensorFlow")
    assert "built without TensorRT" in message
    assert "sees no GPU" in message
    assert "NVIDIA's TensorFlow container" in message
    assert message.count(". ") == 0


def test_what_tftrt_lacks_is_said_in_one_sentence():
    message = load_script("tftrt_infer").missing_tftrt_message(
        ["this TensorFlow 2.17.0 was built without TensorRT", "TensorFlow sees no GPU"]
    )
    assert message.startswith("TF-TRT needs TensorFlow built with TensorRT and an NVIDIA GPU")
    assert "built without TensorRT and TensorFlow sees no GPU" in message
    assert "NVIDIA's TensorFlow container" in message
    assert message.count(". ") == 0


@needs_tftrt
def test_tftrt_conversion_reaches_the_converter_and_stops_with_a_sentence(demo):
    # The converter's arguments bind to this TensorFlow's TrtGraphConverterV2;
    # it then refuses to start because TensorFlow lacks TensorRT.
    _, path = demo
    tftrt_infer = load_script("tftrt_infer")
    with pytest.raises(tftrt_infer.ServingError, match="could not load TensorRT"):
        tftrt_infer.convert_with_tftrt(path, path + "_trt", "FP16", inputs={})


@pytest.mark.gpu
@pytest.mark.skipif(
    tftrt_removed or bool(load_script("tftrt_infer").tftrt_missing()),
    reason="needs TensorFlow <= 2.17 built with TensorRT and a GPU (NVIDIA's container)",
)
@pytest.mark.parametrize("sparse_mode", ["1", "0"])
def test_tftrt_mode_converts_and_reports_throughput(demo, tmp_path, sparse_mode):
    _, path = demo
    result = run_command(
        "tftrt_infer.py",
        "--use_tftrt_model",
        *("--saved_model_dir", path, "--tftrt_output_dir", tmp_path / "trt"),
        *("--batch_size", 8, "--warmup", 2, "--iterations", 5, "--runs", 3),
        env={"TF_TRT_SPARSE_MODE": sparse_mode},
    )
    assert result.returncode == 0, result.stderr
    state = "enabled" if sparse_mode == "1" else "disabled"
    assert f"[TF-TRT] Sparse compute capability is {state}" in result.stderr
    assert re.search(r"Average throughput: [\d.]+ samples/sec", result.stdout)
