"""Compiles the permutation-search kernels into shared libraries.

    python kernels/build.py [OUTPUT_DIR]     # default: tf_asp/_lib

The CPU library (`libtf_asp_search_cpu.so`, C with OpenMP) is always built;
the CUDA one (`libtf_asp_search_cuda.so`) only when `nvcc` is on PATH. A
failed build says why and the NumPy search still works; `setup.py` calls
`build_kernels` during `pip install`.
"""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_LIBRARY = "libtf_asp_search_cpu.so"
CUDA_LIBRARY = "libtf_asp_search_cuda.so"
# Ampere (sm_80) and Hopper (sm_90) binaries, plus PTX for later GPUs.
CUDA_ARCHS = (
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_80,code=compute_80",
)


def _compile(attempts, output):
    """Runs each command in turn until one succeeds; returns the last error."""
    error = "no compile command was given"
    for command in attempts:
        try:
            result = subprocess.run(command + ["-o", output], capture_output=True, text=True)
        except OSError as failure:
            error = f"cannot run {command[0]}: {failure}"
            continue
        if result.returncode == 0:
            return None
        lines = (result.stderr or result.stdout).strip().splitlines()[-5:]
        error = "\n".join(lines) or f"{command[0]} exited with status {result.returncode}"
    return error


def build_cpu(out_dir, compiler=None):
    compiler = compiler or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return "no C compiler (gcc or cc) found"
    source = os.path.join(HERE, "structured_sparsity_cpu.c")
    base = [compiler, "-O3", "-std=c11", "-shared", "-fPIC", "-I", HERE, source]
    attempts = [
        base[:2] + ["-march=native", "-fopenmp"] + base[2:],
        base[:2] + ["-fopenmp"] + base[2:],
        base,  # single-threaded, if OpenMP is missing
    ]
    return _compile(attempts, os.path.join(out_dir, CPU_LIBRARY))


def build_cuda(out_dir, nvcc=None):
    nvcc = nvcc or shutil.which("nvcc")
    if nvcc is None:
        return "nvcc not found"
    source = os.path.join(HERE, "structured_sparsity.cu")
    command = [
        nvcc,
        "-O3",
        "-std=c++17",
        "-shared",
        "-Xcompiler",
        "-fPIC",
        *CUDA_ARCHS,
        "-I",
        HERE,
        source,
    ]
    return _compile([command], os.path.join(out_dir, CUDA_LIBRARY))


def build_kernels(out_dir):
    """Builds what can be built into `out_dir`; returns {library: error}."""
    os.makedirs(out_dir, exist_ok=True)
    errors = {}
    for name, build in ((CPU_LIBRARY, build_cpu), (CUDA_LIBRARY, build_cuda)):
        error = build(out_dir)
        if error is None:
            print(f"tf_asp: built {os.path.join(out_dir, name)}")
        else:
            errors[name] = error
            print(f"tf_asp: could not build {name}: {error}", file=sys.stderr)
    if CPU_LIBRARY in errors:
        print("tf_asp: the permutation search will use its NumPy fallback.", file=sys.stderr)
    return errors


if __name__ == "__main__":
    default = os.path.join(os.path.dirname(HERE), "tf_asp", "_lib")
    errors = build_kernels(sys.argv[1] if len(sys.argv) > 1 else default)
    sys.exit(1 if CPU_LIBRARY in errors else 0)
