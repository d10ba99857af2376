"""The native search kernels (`kernels/`), loaded through ctypes.

`load_library("CPU")` or `load_library("CUDA")` opens the compiled library
from `tf_asp/_lib/`, checks its ABI version and returns a `NativeLibrary`;
`NativeLibrary.search(...)` returns a `NativeSearch` with the same methods
and arguments as `reference.ReferenceSearch`. A missing, stale or broken
library raises `KernelLibraryError`, which says how to rebuild it.

```python
library = load_library("CPU")
with library.search(quantize(matrix), window=16, pattern="4:8") as search:
    improvements, best = search.stripe_groups(permutation, groups)
```
"""

import ctypes
import os

import numpy as np

from tf_asp.patterns import DEFAULT_PATTERN
from tf_asp.patterns import parse_pattern
from tf_asp.search.windows import window_tables

ABI_VERSION = 3  # kernels/structured_sparsity.h: SS_ABI_VERSION
LIBRARY_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_lib")
LIBRARY_FILES = {"CPU": "libtf_asp_search_cpu.so", "CUDA": "libtf_asp_search_cuda.so"}
REBUILD_HINT = "Rebuild it with `python kernels/build.py` (or reinstall tf_asp)."

_i32p = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
_i64p = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")


class KernelLibraryError(RuntimeError):
    """A native search library is missing, stale, broken or failed a call."""


def library_path(kind, directory=None):
    return os.path.join(directory or LIBRARY_DIR, LIBRARY_FILES[kind])


def load_library(kind, directory=None):
    """Opens and checks the `"CPU"` or `"CUDA"` library."""
    path = library_path(kind, directory)
    if not os.path.exists(path):
        raise KernelLibraryError(f"The {kind} search library {path} is not built. {REBUILD_HINT}")
    try:
        handle = ctypes.CDLL(path)
        version = handle.ss_abi_version
    except (OSError, AttributeError) as error:
        raise KernelLibraryError(
            f"The {kind} search library {path} cannot be loaded ({error}). {REBUILD_HINT}"
        ) from error
    version.restype = ctypes.c_int
    if version() != ABI_VERSION:
        raise KernelLibraryError(
            f"The {kind} search library {path} has ABI version {version()}, but this "
            f"tf_asp needs {ABI_VERSION}: it is stale. {REBUILD_HINT}"
        )
    return NativeLibrary(handle, path)


class NativeLibrary:
    """A loaded kernel library: which backend it is and how many devices."""

    def __init__(self, handle, path):
        self.path = path
        self._lib = handle
        handle.ss_backend.restype = ctypes.c_char_p
        handle.ss_device_count.restype = ctypes.c_int
        handle.ss_status_string.restype = ctypes.c_char_p
        handle.ss_status_string.argtypes = [ctypes.c_int]
        handle.ss_search_create.argtypes = [
            _i32p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.POINTER(ctypes.c_void_p),
        ]
        handle.ss_search_destroy.argtypes = [ctypes.c_void_p]
        handle.ss_search_destroy.restype = None
        handle.ss_stripe_groups.argtypes = [
            ctypes.c_void_p,
            _i32p,
            _i32p,
            ctypes.c_int64,
            _i64p,
            _i32p,
        ]
        handle.ss_column_swaps.argtypes = [ctypes.c_void_p, _i32p, _i32p, ctypes.c_int64, _i64p]
        self.backend = handle.ss_backend().decode()

    def device_count(self):
        return int(self._lib.ss_device_count())

    def check(self, status, what):
        if status != 0:
            message = self._lib.ss_status_string(status).decode()
            raise KernelLibraryError(f"{self.backend} search kernel {what} failed: {message}.")

    def search(self, magnitudes, window=0, tables=None, pattern=DEFAULT_PATTERN):
        return NativeSearch(self, magnitudes, window, tables, pattern)


class NativeSearch:
    """A search's data on the library's device, and its two kernels."""

    def __init__(self, library, magnitudes, window=0, tables=None, pattern=DEFAULT_PATTERN):
        self.library = library
        self.backend = library.backend
        self.pattern = parse_pattern(pattern)
        self.window = window
        magnitudes = np.ascontiguousarray(magnitudes, dtype=np.int32)
        self.cols, rows = magnitudes.shape
        if window:
            subsets, partitions = (
                tables if tables is not None else window_tables(window, self.pattern.m)
            )
            self.subsets = np.ascontiguousarray(subsets, dtype=np.int32)
            self.partitions = np.ascontiguousarray(partitions, dtype=np.int32)
            tables_args = (
                self.subsets.ctypes.data,
                len(self.subsets),
                self.partitions.ctypes.data,
                len(self.partitions),
            )
        else:
            tables_args = (None, 0, None, 0)
        handle = ctypes.c_void_p()
        status = library._lib.ss_search_create(
            magnitudes,
            rows,
            self.cols,
            self.pattern.n,
            self.pattern.m,
            window,
            *tables_args,
            ctypes.byref(handle),
        )
        library.check(status, "ss_search_create")
        self._handle = handle
        self._destroy = library._lib.ss_search_destroy  # usable at interpreter exit

    def stripe_groups(self, permutation, groups):
        permutation = np.ascontiguousarray(permutation, dtype=np.int32)
        groups = np.ascontiguousarray(groups, dtype=np.int32)
        improvements = np.empty(len(groups), np.int64)
        best = np.empty(len(groups), np.int32)
        status = self.library._lib.ss_stripe_groups(
            self._handle, permutation, groups, len(groups), improvements, best
        )
        self.library.check(status, "ss_stripe_groups")
        return improvements, best

    def column_swaps(self, permutation, positions):
        permutation = np.ascontiguousarray(permutation, dtype=np.int32)
        positions = np.ascontiguousarray(positions, dtype=np.int32)
        improvements = np.empty((len(positions), self.cols), np.int64)
        status = self.library._lib.ss_column_swaps(
            self._handle, permutation, positions, len(positions), improvements
        )
        self.library.check(status, "ss_column_swaps")
        return improvements

    def close(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._destroy(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        self.close()
