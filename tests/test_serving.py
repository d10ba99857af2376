"""Serving the ONNX export: tftrt_infer.py's ONNX Runtime and TensorRT modes,
and the parts of the TensorRT path that run without a GPU.

TensorRT engines are built only where `tensorrt`, cuda-python and a GPU are
present (the `gpu` tests); everywhere else `--use_tensorrt` must say in one
sentence what is missing.
"""

import re
import statistics

import numpy as np
import onnx
import onnxruntime
import pytest
from helpers import last_line
from helpers import load_script
from helpers import run_command

from tf_asp.report.onnx import load_onnx
from tf_asp.report.onnx import onnx_kernels
from tf_asp.report.served import kernel_rows
from tf_asp.serving import trt_engine
from tf_asp.serving.ort_session import OnnxRuntimeSession

TIMING = ("--batch_size", 8, "--warmup", 2, "--iterations", 5, "--runs", 3)
TENSORRT_MISSING = trt_engine.tensorrt_missing()


# --use_onnxruntime ------------------------------------------------------------


def test_onnxruntime_mode_reports_structure_difference_and_median_throughput(demo, demo_onnx):
    _, path = demo
    result = run_command(
        "tftrt_infer.py",
        "--use_onnxruntime",
        *("--saved_model_dir", path, "--onnx_model", demo_onnx),
        *TIMING,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Sparsity report of {demo_onnx}" in out
    difference = re.search(r"Largest \|ONNX Runtime - native TensorFlow\| .*: (\S+)", out)
    assert float(difference.group(1)) <= 1e-4
    assert "# ONNX Runtime on CPUExecutionProvider: batch 8" in out
    runs = [float(t) for t in re.findall(r"run \d: ([\d.]+) samples/sec", out)]
    average = re.search(r"Average throughput: ([\d.]+) samples/sec", out)
    assert len(runs) == 3 and min(runs) > 0
    assert float(average.group(1)) == statistics.median(runs)


def test_onnxruntime_session_is_called_like_a_signature(demo_onnx):
    session = OnnxRuntimeSession(demo_onnx)
    images = np.zeros((2, 32, 32, 3), np.float32)
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert session.provider == ("CUDAExecutionProvider" if cuda else "CPUExecutionProvider")
    assert session.input_names == ["image"] and session.output_names == ["output_0"]
    assert session(image=images)["output_0"].shape == (2, 10)


@pytest.mark.parametrize("mode", ["--use_onnxruntime", "--use_tensorrt"])
@pytest.mark.parametrize(
    "name, content, message",
    [("missing.onnx", None, "No ONNX model at"), ("notes.onnx", "text", "is not an ONNX model")],
    ids=["missing file", "not ONNX"],
)
def test_onnx_modes_refuse_a_bad_onnx_path_in_one_sentence(
    demo, tmp_path, mode, name, content, message
):
    if content is not None:
        (tmp_path / name).write_text(content)
    _, path = demo
    result = run_command(
        "tftrt_infer.py", mode, "--saved_model_dir", path, "--onnx_model", tmp_path / name
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith("tftrt_infer.py: error: ")
    assert message in last_line(result.stderr)
    assert last_line(result.stderr).count(". ") == 0


def test_onnxruntime_mode_warns_when_no_kernel_is_2to4(tmp_path):
    from tf_asp.export import export_onnx

    model = load_script("main").build_model()  # not pruned
    model.export(tmp_path / "dense", verbose=False)
    export_onnx(model, tmp_path / "dense.onnx")
    result = run_command(
        "tftrt_infer.py",
        "--use_onnxruntime",
        *("--saved_model_dir", tmp_path / "dense", "--onnx_model", tmp_path / "dense.onnx"),
        *TIMING,
    )
    assert result.returncode == 0, result.stderr
    assert "is both 2:4 and of a sparse-Tensor-Core shape" in result.stderr
    assert "Average throughput" in result.stdout


# --use_tensorrt ---------------------------------------------------------------


@pytest.mark.skipif(not TENSORRT_MISSING, reason="TensorRT and a GPU are here: it runs")
def test_tensorrt_mode_without_tensorrt_says_what_is_missing_in_one_sentence(demo, demo_onnx):
    _, path = demo
    result = run_command(
        "tftrt_infer.py", "--use_tensorrt", "--saved_model_dir", path, "--onnx_model", demo_onnx
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Sparsity report" in result.stdout  # the structure is checked first
    message = last_line(result.stderr)
    assert message.startswith("tftrt_infer.py: error: --use_tensorrt needs TensorRT")
    for phrase in TENSORRT_MISSING:
        assert phrase in message
    assert "pip install tensorrt cuda-python" in message
    assert message.count(". ") == 0


@pytest.mark.parametrize(
    "environ, modes",
    [
        ({}, (True, False)),
        ({"TF_TRT_SPARSE_MODE": "0"}, (False,)),
        ({"TF_TRT_SPARSE_MODE": "1"}, (True,)),
    ],
    ids=["unset: both", "0: dense only", "1: sparse only"],
)
def test_tensorrt_builds_sparse_then_dense_unless_tf_trt_sparse_mode_picks_one(environ, modes):
    assert load_script("tftrt_infer").tensorrt_sparse_modes(environ) == modes


def test_sparse_layers_are_read_from_tensorrt_log():
    # The lines TensorRT logs at INFO when it builds with SPARSE_WEIGHTS.
    log = [
        "[MemUsageChange] Init CUDA: CPU +2, GPU +0, now: CPU 35, GPU 5291 (MiB)",
        "(Sparsity) Layers eligible for sparse math: conv1, conv2, dense/MatMul",
        "(Sparsity) TRT inference plan picked sparse implementation for layers: conv2",
        "Engine generation completed in 3.2 seconds.",
    ]
    sparsity = trt_engine.sparsity_from_log(log)
    assert sparsity.eligible == ("conv1", "conv2", "dense/MatMul")
    assert sparsity.picked == ("conv2",)
    assert trt_engine.sparsity_from_log(log[:1]) == ((), ())


@pytest.mark.parametrize(
    "precision, has_flags, quantized, plan",
    [
        ("FP32", True, False, ((), False, False)),
        ("FP16", True, False, (("FP16",), False, False)),
        ("INT8", True, False, (("INT8", "FP16"), False, True)),
        ("INT8", True, True, (("INT8", "FP16"), False, False)),
        ("FP16", False, False, ((), True, False)),
        ("INT8", False, True, ((), False, False)),
    ],
    ids=["fp32", "fp16 TRT10", "int8 TRT10", "int8 TRT10 Q/DQ", "fp16 TRT11", "int8 TRT11 Q/DQ"],
)
def test_precision_becomes_flags_on_tensorrt_10_and_types_on_tensorrt_11(
    precision, has_flags, quantized, plan
):
    assert trt_engine.build_plan(precision, has_flags, quantized) == plan


def test_int8_without_quantization_on_tensorrt_11_is_refused_in_one_sentence():
    with pytest.raises(trt_engine.TensorRTError, match="Q/DQ nodes") as refusal:
        trt_engine.build_plan("INT8", has_precision_flags=False, is_quantized=False)
    assert str(refusal.value).count(". ") == 0


def test_float16_model_for_tensorrt_11_keeps_every_2to4_zero_and_still_computes(
    demo_onnx, tmp_path
):
    model = load_onnx(demo_onnx)
    half = trt_engine.float16_model(model)
    onnx.save(half, tmp_path / "half.onnx")
    kernels = onnx_kernels(model)
    half_kernels = onnx_kernels(load_onnx(str(tmp_path / "half.onnx")))
    assert [k.weights.dtype for k in half_kernels] == [np.float16] * len(kernels)
    for kernel, half_kernel in zip(kernels, half_kernels):
        np.testing.assert_array_equal(half_kernel.weights == 0, kernel.weights == 0)

    def structure(rows):
        return [(row.shape, row.zero_fraction, row.is_2to4, row.shape_qualifies) for row in rows]

    assert structure(kernel_rows(half_kernels)) == structure(kernel_rows(kernels))
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    full = OnnxRuntimeSession(demo_onnx)(image=images)["output_0"]
    halved = OnnxRuntimeSession(str(tmp_path / "half.onnx"))(image=images)["output_0"]
    np.testing.assert_allclose(halved, full, atol=2e-2)


def test_missing_tensorrt_is_one_sentence_with_how_to_get_it():
    message = trt_engine.missing_tensorrt_message(
        ["the tensorrt Python package is not installed", "CUDA sees no GPU"]
    )
    assert "package is not installed and CUDA sees no GPU" in message
    assert "pip install tensorrt cuda-python" in message
    assert message.count(". ") == 0


@pytest.mark.gpu
@pytest.mark.skipif(bool(TENSORRT_MISSING), reason="needs tensorrt, cuda-python and a GPU")
def test_tensorrt_mode_builds_sparse_and_dense_engines_and_times_both(demo, demo_onnx):
    _, path = demo
    result = run_command(
        "tftrt_infer.py",
        "--use_tensorrt",
        *("--saved_model_dir", path, "--onnx_model", demo_onnx, "--precision", "fp16"),
        *TIMING,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "TensorRT found 2:4 weights in:" in out
    assert "TensorRT chose sparse kernels for:" in out
    differences = re.findall(r"Largest \|TensorRT - native TensorFlow\| .*: (\S+)", out)
    assert len(differences) == 2 and max(map(float, differences)) < 5e-2  # FP16
    assert "# TensorRT FP16 - sparse weights on on GPU" in out
    assert "# TensorRT FP16 - sparse weights off on GPU" in out
    assert re.search(r"Sparse weights on / off: [\d.]+ / [\d.]+ samples/sec", out)
