"""The kernel build: the CPU library always compiles, the CUDA one wherever
`nvcc` is installed (CI compiles it even without a GPU), and both load with
the same ABI."""

import importlib.util
import os
import shutil

import pytest

from tf_asp.search import native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_module():
    spec = importlib.util.spec_from_file_location(
        "kernel_build", os.path.join(REPO, "kernels", "build.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_library_builds_and_loads_with_the_current_abi(tmp_path):
    assert build_module().build_cpu(str(tmp_path)) is None
    library = native.load_library("CPU", directory=str(tmp_path))
    assert library.backend == "CPU"
    assert library.device_count() == 1


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed here")
def test_cuda_library_compiles_wherever_nvcc_is_installed():
    """setup built it into tf_asp/_lib; it loads without a GPU and says so."""
    library = native.load_library("CUDA")
    assert library.backend == "CUDA"
    assert library.device_count() >= 0


def test_a_failing_compiler_is_reported_not_raised(tmp_path):
    error = build_module().build_cpu(str(tmp_path), compiler="false")
    assert "status 1" in error
    assert not os.path.exists(native.library_path("CPU", str(tmp_path)))


def test_a_missing_compiler_is_reported_not_raised(tmp_path):
    error = build_module().build_cpu(str(tmp_path), compiler=str(tmp_path / "no-such-cc"))
    assert "cannot run" in error
