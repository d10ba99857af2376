"""Where the search runs: the native CPU (and CUDA) kernels must agree with
the NumPy reference bit for bit, a missing, stale or broken library is a
clear error, and a backend that cannot run falls back with a warning."""

import itertools
import shutil
import subprocess
import warnings

import numpy as np
import pytest

from tf_asp import search
from tf_asp.patterns import parse_pattern
from tf_asp.search import backends
from tf_asp.search import metrics
from tf_asp.search import native
from tf_asp.search.native import KernelLibraryError
from tf_asp.search.reference import ReferenceSearch
from tf_asp.search.windows import window_tables


def random_matrix(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def tied_matrix(shape, seed=0):
    """Small integers: equal scores everywhere, so tie-breaking must agree too."""
    return np.random.default_rng(seed).integers(0, 3, shape).astype(np.float64)


def random_groups(stripes, group_size, count, rng):
    """`count` groups of distinct stripes, in random order within each group."""
    groups = [rng.choice(stripes, group_size, replace=False) for _ in range(count)]
    return np.array(groups, np.int32)


def cuda_library():
    """The CUDA library, or a skip saying why it cannot run here."""
    try:
        library = native.load_library("CUDA")
    except KernelLibraryError as error:
        pytest.skip(f"the CUDA search library is not usable here: {error}")
    if library.device_count() == 0:
        pytest.skip("the CUDA search library is built but sees no GPU (device_count() == 0)")
    return library


def skip_unless_cuda_library_sees_no_gpu():
    """For checks of this machine: a CUDA library that is absent, or built and
    loadable but without a GPU (a broken one warns for "auto" as well)."""
    try:
        count = native.load_library("CUDA").device_count()
    except KernelLibraryError as error:
        if "not built" not in str(error):
            pytest.skip(f"the CUDA search library is broken here: {error}")
        return
    if count > 0:
        pytest.skip("a GPU is visible to the CUDA search library here")


BUILT_LIBRARY_DIR = native.LIBRARY_DIR


@pytest.fixture
def cpu_library():
    """The built CPU library (even where a test points LIBRARY_DIR elsewhere)."""
    return native.load_library("CPU", directory=BUILT_LIBRARY_DIR)


@pytest.fixture
def library_dir(tmp_path, monkeypatch):
    """An empty library directory that the loader and the backend choice use."""
    monkeypatch.setattr(native, "LIBRARY_DIR", str(tmp_path))
    return tmp_path


def compile_library(tmp_path, source, name):
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler to build a fake library with")
    c_file = tmp_path / "fake.c"
    c_file.write_text(source)
    command = [compiler, "-shared", "-fPIC", str(c_file), "-o", str(tmp_path / name)]
    subprocess.run(command, check=True)


# --- strategies agree across backends -----------------------------------------

AGREEMENT_SHAPES = [(32, 16), (64, 32), (40, 64), (9, 24)]
AGREEMENT_STRATEGIES = {
    "stripe_groups_8_0": lambda m, **kw: search.optimize_stripe_groups(m, 8, 0, **kw),
    "stripe_groups_8_5": lambda m, **kw: search.optimize_stripe_groups(m, 8, 5, seed=4, **kw),
    "stripe_groups_12_2": lambda m, **kw: search.optimize_stripe_groups(m, 12, 2, seed=4, **kw),
    "channel_swap_0": lambda m, **kw: search.channel_swap(m, 0, **kw),
    "channel_swap_5": lambda m, **kw: search.channel_swap(m, 5, seed=4, **kw),
}


# Window 12 on 64 columns is 560 groups of 5775 partitions: seconds in NumPy.
AGREEMENT_CASES = [
    (name, shape)
    for name, shape in itertools.product(sorted(AGREEMENT_STRATEGIES), AGREEMENT_SHAPES)
    if not (name.startswith("stripe_groups_12") and shape[1] > 32)
]


@pytest.mark.parametrize(
    "name, shape", AGREEMENT_CASES, ids=[f"{n}-{r}x{c}" for n, (r, c) in AGREEMENT_CASES]
)
def test_cpu_and_numpy_backends_return_identical_permutations(name, shape):
    matrix = random_matrix(shape, seed=shape[0] + shape[1])
    on_cpu = AGREEMENT_STRATEGIES[name](matrix, device="CPU")
    on_numpy = AGREEMENT_STRATEGIES[name](matrix, device="numpy")
    assert on_cpu.backend == "CPU"
    assert on_numpy.backend == "numpy"
    np.testing.assert_array_equal(on_cpu.permutation, on_numpy.permutation)
    assert on_cpu.magnitude == on_numpy.magnitude


@pytest.mark.parametrize("name", sorted(AGREEMENT_STRATEGIES))
def test_backends_break_ties_the_same_way(name):
    matrix = tied_matrix((12, 32), seed=1)
    on_cpu = AGREEMENT_STRATEGIES[name](matrix, device="CPU")
    on_numpy = AGREEMENT_STRATEGIES[name](matrix, device="numpy")
    np.testing.assert_array_equal(on_cpu.permutation, on_numpy.permutation)


@pytest.mark.parametrize("cols", [8, 12, 16])
def test_exhaustive_agrees_across_backends(cols):
    matrix = random_matrix((10, cols), seed=cols)
    on_cpu = search.exhaustive(matrix, device="CPU")
    on_numpy = search.exhaustive(matrix, device="numpy")
    assert (on_cpu.backend, on_numpy.backend) == ("CPU", "numpy")
    np.testing.assert_array_equal(on_cpu.permutation, on_numpy.permutation)


def test_random_permutations_run_on_numpy_on_every_device():
    matrix = random_matrix((8, 16), seed=2)
    on_cpu = search.random_permutations(matrix, 30, device="CPU", seed=1)
    on_numpy = search.random_permutations(matrix, 30, device="numpy", seed=1)
    assert on_cpu.backend == on_numpy.backend == "numpy"
    np.testing.assert_array_equal(on_cpu.permutation, on_numpy.permutation)


# --- the raw kernels agree with the reference ----------------------------------


def assert_stripe_groups_agree(native_library, matrix, window, seed, pattern="2:4", count=60):
    rng = np.random.default_rng(seed)
    magnitudes = metrics.quantize(matrix)
    cols, m = matrix.shape[1], parse_pattern(pattern).m
    permutation = rng.permutation(cols).astype(np.int32)
    groups = random_groups(cols // m, window // m, count, rng)
    tables = window_tables(window, m)
    reference = ReferenceSearch(magnitudes, window, tables, pattern)
    expected = reference.stripe_groups(permutation, groups)
    with native_library.search(magnitudes, window, tables, pattern) as kernel:
        got = kernel.stripe_groups(permutation, groups)
    np.testing.assert_array_equal(got[0], expected[0])  # improvements
    np.testing.assert_array_equal(got[1], expected[1])  # best partition indices
    assert got[0].dtype == np.int64 and got[1].dtype == np.int32
    return expected


def assert_column_swaps_agree(native_library, matrix, seed, pattern="2:4"):
    rng = np.random.default_rng(seed)
    magnitudes = metrics.quantize(matrix)
    cols = matrix.shape[1]
    permutation = rng.permutation(cols).astype(np.int32)
    for positions in (np.arange(cols), rng.integers(0, cols, 7)):
        expected = ReferenceSearch(magnitudes, pattern=pattern).column_swaps(permutation, positions)
        with native_library.search(magnitudes, pattern=pattern) as kernel:
            got = kernel.column_swaps(permutation, positions)
        assert got.shape == (len(positions), cols) and got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)


KERNEL_CASES = [
    ((32, 16), random_matrix),
    ((17, 48), random_matrix),
    ((64, 64), random_matrix),
    ((12, 32), tied_matrix),
]


@pytest.mark.parametrize("window", [8, 12])
@pytest.mark.parametrize("shape, make", KERNEL_CASES)
def test_cpu_stripe_groups_kernel_matches_the_reference(cpu_library, shape, make, window):
    expected = assert_stripe_groups_agree(cpu_library, make(shape, seed=3), window, seed=4)
    assert (expected[0] >= 0).all()
    assert (expected[1][expected[0] == 0] == 0).all(), "no gain must mean the identity partition"


@pytest.mark.parametrize("shape, make", KERNEL_CASES)
def test_cpu_column_swaps_kernel_matches_the_reference(cpu_library, shape, make):
    assert_column_swaps_agree(cpu_library, make(shape, seed=5), seed=6)


def test_reference_stripe_groups_scores_every_arrangement():
    """The reference's gain is the best partition's exact score minus the identity's."""
    matrix = random_matrix((7, 16), seed=7)
    magnitudes = metrics.quantize(matrix)
    permutation = np.random.default_rng(8).permutation(16)
    quads, partitions = window_tables(8)
    groups = np.array(list(itertools.permutations(range(4), 2)), np.int32)
    improvements, best = ReferenceSearch(magnitudes, 8).stripe_groups(permutation, groups)
    for group, gain, chosen in zip(groups, improvements, best):
        window = permutation[(4 * group[:, None] + np.arange(4)).ravel()]
        scores = [metrics.quantized_score(magnitudes, window[quads[p].ravel()]) for p in partitions]
        assert gain == max(scores) - scores[0]
        assert chosen == int(np.argmax(scores))


def test_reference_column_swaps_is_the_change_of_the_total_score():
    matrix = random_matrix((5, 12), seed=9)
    magnitudes = metrics.quantize(matrix)
    permutation = np.random.default_rng(10).permutation(12)
    gains = ReferenceSearch(magnitudes).column_swaps(permutation, np.arange(12))
    before = metrics.quantized_score(magnitudes, permutation)
    for p, q in itertools.product(range(12), repeat=2):
        swapped = permutation.copy()
        swapped[[p, q]] = swapped[[q, p]]
        expected = 0 if p // 4 == q // 4 else metrics.quantized_score(magnitudes, swapped) - before
        assert gains[p, q] == expected


@pytest.mark.gpu
@pytest.mark.parametrize("window", [8, 12])
def test_cuda_kernels_match_the_reference(window):
    library = cuda_library()
    assert library.backend == "CUDA"
    for shape, make in KERNEL_CASES:
        assert_stripe_groups_agree(library, make(shape, seed=3), window, seed=4)
        assert_column_swaps_agree(library, make(shape, seed=5), seed=6)


@pytest.mark.gpu
def test_gpu_and_numpy_backends_return_identical_permutations():
    cuda_library()
    for shape, name in itertools.product(AGREEMENT_SHAPES, sorted(AGREEMENT_STRATEGIES)):
        matrix = random_matrix(shape, seed=shape[0] + shape[1])
        on_gpu = AGREEMENT_STRATEGIES[name](matrix, device="GPU")
        on_numpy = AGREEMENT_STRATEGIES[name](matrix, device="numpy")
        assert on_gpu.backend == "CUDA"
        np.testing.assert_array_equal(
            on_gpu.permutation, on_numpy.permutation, err_msg=f"{name} {shape}"
        )


# --- the native library itself ----------------------------------------------------


def test_cpu_library_says_what_it_is(cpu_library):
    assert cpu_library.backend == "CPU"
    assert cpu_library.device_count() == 1
    assert cpu_library.path == native.library_path("CPU", BUILT_LIBRARY_DIR)


def test_native_kernels_refuse_bad_arguments_with_a_kernel_error(cpu_library):
    magnitudes = metrics.quantize(random_matrix((4, 16)))
    negative = magnitudes.copy()
    negative[0, 0] = -1
    with pytest.raises(KernelLibraryError, match="ss_search_create failed: invalid argument"):
        cpu_library.search(negative, 8)
    too_large = magnitudes.copy()
    too_large[0, 0] = metrics.MAX_QUANTIZED + 1
    with pytest.raises(KernelLibraryError, match="invalid argument"):
        cpu_library.search(too_large)
    with cpu_library.search(magnitudes, 8) as kernel:
        with pytest.raises(KernelLibraryError, match="ss_stripe_groups failed: invalid argument"):
            kernel.stripe_groups(np.zeros(16), np.array([[0, 1]]))  # not a permutation
        with pytest.raises(KernelLibraryError, match="ss_stripe_groups failed"):
            kernel.stripe_groups(np.arange(16), np.array([[0, 4]]))  # no stripe 4
        with pytest.raises(KernelLibraryError, match="ss_column_swaps failed"):
            kernel.column_swaps(np.arange(16), np.array([16]))
    with cpu_library.search(magnitudes) as kernel:
        with pytest.raises(KernelLibraryError, match="ss_stripe_groups failed"):
            kernel.stripe_groups(np.arange(16), np.array([[0, 1]]))  # a handle without a window


def test_a_closed_search_can_be_closed_again(cpu_library):
    kernel = cpu_library.search(metrics.quantize(random_matrix((4, 8))))
    kernel.close()
    kernel.close()


def test_missing_library_says_how_to_build_it(tmp_path):
    with pytest.raises(KernelLibraryError, match=r"not built.*kernels/build\.py"):
        native.load_library("CPU", directory=str(tmp_path))
    with pytest.raises(KernelLibraryError, match=r"CUDA.*not built.*kernels/build\.py"):
        native.load_library("CUDA", directory=str(tmp_path))


def test_stale_library_is_refused_as_stale(tmp_path):
    source = "int ss_abi_version(void) { return 999; }\n"
    compile_library(tmp_path, source, native.LIBRARY_FILES["CPU"])
    stale = rf"ABI version 999.*needs {native.ABI_VERSION}.*stale.*kernels/build\.py"
    with pytest.raises(KernelLibraryError, match=stale):
        native.load_library("CPU", directory=tmp_path)


def test_library_without_the_abi_is_refused(tmp_path):
    source = "int something_else(void) { return 1; }\n"
    compile_library(tmp_path, source, native.LIBRARY_FILES["CPU"])
    with pytest.raises(KernelLibraryError, match=r"cannot be loaded.*kernels/build\.py"):
        native.load_library("CPU", directory=tmp_path)


def test_a_file_that_is_not_a_library_cannot_be_loaded(tmp_path):
    garbage = b"\x7fELF but not really" + bytes(range(256))
    (tmp_path / native.LIBRARY_FILES["CPU"]).write_bytes(garbage)
    with pytest.raises(KernelLibraryError, match=r"cannot be loaded.*kernels/build\.py"):
        native.load_library("CPU", directory=tmp_path)


# --- choosing a backend --------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling, canonical",
    [
        ("cpu", "CPU"),
        ("CPU", "CPU"),
        ("gpu", "GPU"),
        ("Gpu", "GPU"),
        ("cuda", "GPU"),
        ("AUTO", "auto"),
        ("NumPy", "numpy"),
    ],
)
def test_check_device_accepts_any_case(spelling, canonical):
    assert backends.check_device(spelling) == canonical


@pytest.mark.parametrize("device", ["TPU", "", "cpu0", None, 0, 1])
def test_check_device_rejects_unknown_devices(device):
    with pytest.raises(ValueError, match="device must be one of"):
        backends.check_device(device)
    with pytest.raises(ValueError, match="device must be one of"):
        search.optimize_stripe_groups(random_matrix((4, 8)), device=device)


def test_select_backend_names_its_backend():
    assert backends.select_backend("numpy").backend == "numpy"
    assert backends.select_backend("CPU").backend == "CPU"
    assert backends.select_backend("cpu").backend == "CPU"


def test_missing_cpu_library_falls_back_to_numpy_with_a_warning(library_dir):
    with pytest.warns(RuntimeWarning, match=r"not built.*Falling back to the NumPy search"):
        backend = backends.select_backend("CPU")
    assert backend.backend == "numpy"


def test_a_search_still_runs_without_any_library(tmp_path, monkeypatch):
    """The fallback searches on NumPy, and finds what the CPU library finds."""
    matrix = random_matrix((16, 32), seed=11)
    expected = search.optimize_stripe_groups(matrix, 8, 3, device="CPU")
    monkeypatch.setattr(native, "LIBRARY_DIR", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="Falling back to the NumPy search"):
        result = search.optimize_stripe_groups(matrix, 8, 3, device="CPU")
    assert (expected.backend, result.backend) == ("CPU", "numpy")
    np.testing.assert_array_equal(result.permutation, expected.permutation)


def test_gpu_without_any_library_falls_back_twice(library_dir):
    with pytest.warns(RuntimeWarning) as record:
        backend = backends.select_backend("GPU")
    messages = [str(w.message) for w in record]
    assert any("CUDA" in m and "Searching on the CPU instead" in m for m in messages)
    assert any("Falling back to the NumPy search" in m for m in messages)
    assert backend.backend == "numpy"


def test_auto_without_cuda_library_uses_the_cpu_silently(library_dir, cpu_library):
    shutil.copy(cpu_library.path, library_dir / native.LIBRARY_FILES["CPU"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = backends.select_backend("auto")
    assert backend.backend == "CPU"


def test_gpu_without_cuda_library_warns_and_uses_the_cpu(library_dir, cpu_library):
    shutil.copy(cpu_library.path, library_dir / native.LIBRARY_FILES["CPU"])
    message = r"CUDA search library .* not built.*Searching on the CPU"
    with pytest.warns(RuntimeWarning, match=message):
        backend = backends.select_backend("GPU")
    assert backend.backend == "CPU"


def test_broken_cuda_library_warns_even_for_auto(library_dir, cpu_library):
    shutil.copy(cpu_library.path, library_dir / native.LIBRARY_FILES["CPU"])
    (library_dir / native.LIBRARY_FILES["CUDA"]).write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match=r"cannot be loaded.*Searching on the CPU instead"):
        backend = backends.select_backend("auto")
    assert backend.backend == "CPU"


def test_gpu_on_a_machine_without_gpu_warns_and_uses_the_cpu():
    skip_unless_cuda_library_sees_no_gpu()
    with pytest.warns(RuntimeWarning, match="[Ss]earching on the CPU instead"):
        backend = backends.select_backend("GPU")
    assert backend.backend == "CPU"


def test_auto_on_a_machine_without_gpu_uses_the_cpu_silently():
    skip_unless_cuda_library_sees_no_gpu()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.select_backend("auto").backend == "CPU"
        assert search.optimize_stripe_groups(random_matrix((4, 16)), 8, 0).backend == "CPU"
