"""Choosing where the search kernels run: CUDA, native CPU or NumPy.

```python
backend = select_backend("auto")     # CUDA if a GPU is visible, else CPU
with backend.search(quantize(matrix), window=8) as search:
    ...
```

`"GPU"` and `"auto"` use the CUDA library when it is built and a GPU is
visible; `"CPU"` uses the native CPU library; `"numpy"` the reference. A
library that is asked for but missing or broken falls back to the next one
with a warning (once per message), so a search always runs.
"""

import contextlib
import os
import warnings

from tf_asp.log import logger
from tf_asp.patterns import DEFAULT_PATTERN
from tf_asp.search.native import KernelLibraryError
from tf_asp.search.native import library_path
from tf_asp.search.native import load_library
from tf_asp.search.reference import ReferenceSearch

DEVICES = ("auto", "GPU", "CPU", "numpy")


class NumpyBackend:
    """The reference kernels as a backend."""

    backend = "numpy"

    def search(self, magnitudes, window=0, tables=None, pattern=DEFAULT_PATTERN):
        return contextlib.closing(ReferenceSearch(magnitudes, window, tables, pattern))


def check_device(device, name="device"):
    """The canonical spelling of `device`, or a ValueError."""
    canonical = {d.lower(): d for d in DEVICES}
    canonical["cuda"] = "GPU"
    if not isinstance(device, str) or device.lower() not in canonical:
        raise ValueError(f"{name} must be one of {DEVICES}; got {device!r}.")
    return canonical[device.lower()]


def select_backend(device="auto"):
    """A backend for `device`: a loaded native library or `NumpyBackend()`."""
    device = check_device(device)
    if device == "numpy":
        return NumpyBackend()
    if device in ("GPU", "auto"):
        gpu = _cuda_library(asked=device == "GPU")
        if gpu is not None:
            return gpu
    try:
        return load_library("CPU")
    except KernelLibraryError as error:
        _warn(f"{error} Falling back to the NumPy search, which is slower.")
        return NumpyBackend()


def _cuda_library(asked):
    """The CUDA library if it is usable; warns if it was asked for (or is
    built but broken) and is not."""
    try:
        library = load_library("CUDA")
    except KernelLibraryError as error:
        if asked or os.path.exists(library_path("CUDA")):
            _warn(f"{error} Searching on the CPU instead.")
        return None
    if library.device_count() > 0:
        return library
    if asked:
        _warn(
            "search device 'GPU' was asked for, but the CUDA search library "
            "sees no GPU (or no driver); searching on the CPU instead."
        )
    logger.debug("The CUDA search library sees no GPU; searching on the CPU.")
    return None


def _warn(message):
    warnings.warn(message, RuntimeWarning, stacklevel=4)
