"""tf_asp: automatic 2:4 structured sparsity for TensorFlow / Keras.

Wrap the optimizer, fine-tune, and every eligible GEMM kernel keeps exactly 2
of every 4 weights along its input channels:

```python
import tf_asp

optimizer = tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.01), model)
model.compile(optimizer=optimizer, loss="mse")
model.fit(x, y)
tf_asp.check_pruned_layers(model, check_structured=True)
```

Or prune a trained model once, with no optimizer (other N:M patterns,
transposable and activation-aware masks work in both):

```python
tf_asp.prune_model(model, pattern="2:4", criterion="activation", calibration_data=x[:256])
```

The Keras-facing names load TensorFlow on first use, so `tf_asp.search` (the
permutation search and its command line) needs only NumPy. When Keras (or
tf_keras) is already imported, importing tf_asp registers its optimizer
wrappers with it at once, so `keras.models.load_model` finds them in a
`.keras` file; otherwise the first use of a wrapper does.
"""

import importlib
import sys

from tf_asp.log import set_verbosity

__version__ = "0.2.0"

# Public names that need TensorFlow, and the module that defines each.
_TENSORFLOW_NAMES = {
    "AspOptimizerWrapper": "tf_asp.optimizer",
    "AspOptimizerWrapperV2": "tf_asp.optimizer",
    "check_pruned_layers": "tf_asp.masks",
    "export_onnx": "tf_asp.export",
    "prune_model": "tf_asp.oneshot",
    "sparsity_report": "tf_asp.report",
}
# Public names that need only NumPy.
_NUMPY_NAMES = {"GemmKernel": "tf_asp.registry"}

TENSORFLOW_MISSING = (
    "tf_asp needs TensorFlow 2.21 with Keras 3 for {name}, and TensorFlow is "
    "not installed. Install it with `pip install 'tf_asp[cpu]'` "
    "(tensorflow-cpu) or `pip install 'tf_asp[gpu]'` (tensorflow[and-cuda]); "
    "tf_asp.search works without it."
)


def __getattr__(name):
    if name in _NUMPY_NAMES:
        return getattr(importlib.import_module(_NUMPY_NAMES[name]), name)
    module = _TENSORFLOW_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'tf_asp' has no attribute {name!r}")
    try:
        import tensorflow  # noqa: F401
    except ImportError as error:
        raise ImportError(TENSORFLOW_MISSING.format(name=f"tf_asp.{name}")) from error
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(_TENSORFLOW_NAMES) | set(_NUMPY_NAMES))


__all__ = ["__version__", "set_verbosity", *sorted(_NUMPY_NAMES), *sorted(_TENSORFLOW_NAMES)]

# Keras finds a saved optimizer's class only if it was registered before loading.
if sys.modules.get("keras") is not None:
    importlib.import_module("tf_asp.optimizer")
if sys.modules.get("tf_keras") is not None:
    importlib.import_module("tf_asp.keras2")
