"""Installs tf_asp and compiles its permutation-search kernels.

The CPU kernel library is always built; the CUDA one only when `nvcc` is on
PATH. Both land in `tf_asp/_lib/`, which the search loads through ctypes. A
failed kernel build prints why and leaves the NumPy search path working.
"""

import importlib.util
import os
import re

from setuptools import find_packages
from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    """The version, written once in tf_asp/__init__.py."""
    with open(os.path.join(HERE, "tf_asp", "__init__.py")) as source:
        return re.search(r'^__version__ = "([^"]+)"', source.read(), re.M).group(1)


def _build_kernels():
    script = os.path.join(HERE, "kernels", "build.py")
    if not os.path.exists(script):
        print("tf_asp: kernels/build.py not found; NumPy search only.")
        return
    spec = importlib.util.spec_from_file_location("tf_asp_kernel_build", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_kernels(os.path.join(HERE, "tf_asp", "_lib"))


class BuildPyWithKernels(build_py):
    """`build_py` that compiles the kernels into the package first."""

    def run(self):
        _build_kernels()
        super().run()


TEST_REQUIRES = ["pytest>=7", "pytest-timeout", "ruff==0.17.6"]
# ONNX export (tf_asp.export), ONNX reports and ONNX Runtime serving; these
# versions work with TensorFlow 2.21 and NumPy 2.
ONNX_REQUIRES = ["tf2onnx>=1.17", "onnx>=1.17", "onnxruntime>=1.20"]

setup(
    name="tf_asp",
    version=_version(),
    description=(
        "Automatic 2:4 structured sparsity with channel permutation for TensorFlow / Keras 3"
    ),
    long_description=open(os.path.join(HERE, "README.md")).read()
    if os.path.exists(os.path.join(HERE, "README.md"))
    else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tf_asp", "tf_asp.*"]),
    package_data={"tf_asp": ["_lib/*.so"]},
    install_requires=["numpy>=1.24", "pydot>=2"],
    extras_require={
        "cpu": ["tensorflow-cpu==2.21.0"],
        "gpu": ["tensorflow[and-cuda]==2.21.0"],
        "test": TEST_REQUIRES,
        "onnx": ONNX_REQUIRES,
        # benchmarks/masks.py trains on scikit-learn's digits
        "bench": ["scikit-learn"],
        # tftrt_infer.py --use_tensorrt (a Linux machine with an NVIDIA GPU)
        "tensorrt": ["tensorrt>=10", "cuda-python>=12"],
    },
    cmdclass={"build_py": BuildPyWithKernels},
)
