"""The kernel build: the CPU library always compiles, the CUDA one wherever
`nvcc` is installed (CI compiles it even without a GPU), and both load with
the same ABI."""

import importlib.util
import os
import shutil
import subprocess

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


CUDA_NETWORK_CHECK = r"""
#include "structured_sparsity.cu"
#include <algorithm>
#include <cstdio>
#include <cstdlib>

// top_n_sum<M> (the CUDA kernels' selection) against sorting, on the host.
template <int M> int check() {
  for (int n = 1; n < M; ++n)
    for (int trial = 0; trial < 20000; ++trial) {
      int values[M], sorted[M];
      for (int w = 0; w < M; ++w) values[w] = sorted[w] = rand() % (trial % 2 ? 1000 : 3);
      std::sort(sorted, sorted + M);
      int expected = 0;
      for (int w = M - n; w < M; ++w) expected += sorted[w];
      if (top_n_sum<M>(values, n) != expected) {
        printf("top_n_sum<%d> with n = %d is wrong\n", M, n);
        return 1;
      }
    }
  return 0;
}

// replaced_row_change (the CUDA column swaps) against rescoring a sorted row.
template <int M> int check_replacement() {
  for (int n = 1; n < M; ++n)
    for (int trial = 0; trial < 20000; ++trial) {
      int values[M], sorted[M], changed[M];
      const int range = trial % 2 ? 1000 : 3;  // ties too
      for (int w = 0; w < M; ++w) values[w] = sorted[w] = changed[w] = rand() % range;
      const int slot = rand() % M, arriving = rand() % range;
      std::sort(sorted, sorted + M);
      changed[slot] = arriving;
      int before = 0, after = 0;
      for (int w = M - n; w < M; ++w) before += sorted[w];
      std::sort(changed, changed + M);
      for (int w = M - n; w < M; ++w) after += changed[w];
      const int nth = sorted[M - n], next = sorted[M - n - 1];
      const int change = replaced_row_change(values[slot], arriving, nth, next);
      if (change != after - before) {
        printf("replaced_row_change for %d:%d is wrong\n", n, M);
        return 1;
      }
    }
  return 0;
}

int main() {
  return check<2>() + check<4>() + check<8>() + check<16>() + check_replacement<2>() +
         check_replacement<4>() + check_replacement<8>() + check_replacement<16>();
}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed here")
def test_cuda_selection_network_and_swap_arithmetic_are_right(tmp_path):
    """The CUDA kernels' top-n network and their column-swap change of a row,
    compiled for the host with nvcc and run without a GPU, against sorting,
    for every n:m with m in {2, 4, 8, 16}."""
    source = tmp_path / "network_check.cu"
    source.write_text(CUDA_NETWORK_CHECK)
    kernels = os.path.join(REPO, "kernels")
    binary = str(tmp_path / "network_check")
    compiled = subprocess.run(
        ["nvcc", "-std=c++17", "-I", kernels, str(source), "-o", binary],
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    result = subprocess.run([binary], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
