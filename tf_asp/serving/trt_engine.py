"""TensorRT engines built from an ONNX file, with sparse weights on or off.

```python
if not tensorrt_missing():
    with TensorRTEngine.build("model.onnx", {"image": (32, 32, 32, 3)}, "FP16") as engine:
        engine.sparsity.picked        # the layers TensorRT runs with sparse kernels
        engine.set_inputs({"image": batch})
        engine.execute()              # queued on the engine's CUDA stream
        engine.synchronize()
        engine.outputs()              # {"output_0": array}
```

`sparse=True` sets `BuilderFlag.SPARSE_WEIGHTS`: TensorRT then looks for
weights that are 2:4 along their input channels and times sparse tactics for
them, keeping those that are faster. Its INFO log says which layers were
eligible and which it picked (`(Sparsity) Layers eligible for sparse math:
...`, `(Sparsity) TRT inference plan picked sparse implementation for
layers: ...`); `engine.sparsity` holds both lists.

Sparse Tensor Cores run FP16 and INT8. TensorRT 10 turns those on with builder
flags (INT8 calibrated with `IInt8EntropyCalibrator2` on the batches given);
TensorRT 11 builds strongly typed networks only, so FP16 first converts the
model's float tensors to float16 (`onnxruntime.transformers.float16`; zeros
stay zeros) and INT8 takes a model quantized with Q/DQ nodes (NVIDIA ModelOpt).
Device memory and the stream come from cuda-python's runtime API.
"""

import sys
from typing import NamedTuple

import numpy as np

ELIGIBLE = "(Sparsity) Layers eligible for sparse math:"
PICKED = "(Sparsity) TRT inference plan picked sparse implementation for layers:"
INSTALL = (
    "pip install tensorrt cuda-python on a Linux machine with an NVIDIA GPU and driver "
    "(Ampere or newer for sparse Tensor Cores), or use NVIDIA's TensorRT container "
    "(nvcr.io/nvidia/tensorrt:<yy.mm>-py3)"
)


class TensorRTError(RuntimeError):
    """TensorRT could not parse, build or run the model; the message says why."""


class Sparsity(NamedTuple):
    """What TensorRT's log says about sparse weights: layer names."""

    eligible: tuple
    picked: tuple


def sparsity_from_log(lines):
    """The layers TensorRT found 2:4 (`eligible`) and ran sparse (`picked`).

    >>> sparsity_from_log(["[I] [TRT] (Sparsity) Layers eligible for sparse math: a, b"])
    Sparsity(eligible=('a', 'b'), picked=())
    """
    found = {ELIGIBLE: (), PICKED: ()}
    for line in lines:
        for marker in found:
            if marker in line:
                names = line.split(marker, 1)[1].split(",")
                found[marker] += tuple(name.strip() for name in names if name.strip())
    return Sparsity(found[ELIGIBLE], found[PICKED])


def tensorrt_missing():
    """What this machine lacks to build TensorRT engines, as phrases ([]: nothing)."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("the tensorrt Python package is not installed")
    try:
        cudart = _cuda_runtime()
    except ImportError:
        missing.append("cuda-python is not installed")
    else:
        error, count = cudart.cudaGetDeviceCount()
        if error != cudart.cudaError_t.cudaSuccess or not count:
            missing.append("CUDA sees no GPU")
    return missing


def gpu_capability(device=0):
    """(name, (major, minor) compute capability) of a CUDA GPU, from cuda-python."""
    cudart = _cuda_runtime()
    properties = _checked(cudart, cudart.cudaGetDeviceProperties(device))
    name = properties.name.split(b"\0", 1)[0].decode(errors="replace")
    return name, (properties.major, properties.minor)


def missing_tensorrt_message(missing):
    """One sentence: what TensorRT serving lacks here and how to get it."""
    return (
        f"--use_tensorrt needs TensorRT, cuda-python and an NVIDIA GPU, but "
        f"{' and '.join(missing)}; {INSTALL}."
    )


class BuildPlan(NamedTuple):
    """How to build at a precision: builder flags, float16 conversion, calibration."""

    flags: tuple
    to_float16: bool
    calibrate: bool


def build_plan(precision, has_precision_flags, is_quantized):
    """How to build an engine at `precision` ("FP32", "FP16" or "INT8").

    `has_precision_flags`: this TensorRT has `BuilderFlag.FP16` (10.x, not
    11.x). `is_quantized`: the ONNX model has QuantizeLinear nodes.

    >>> build_plan("FP16", has_precision_flags=False, is_quantized=False)
    BuildPlan(flags=(), to_float16=True, calibrate=False)
    """
    if precision == "FP32":
        return BuildPlan((), False, False)
    if has_precision_flags:
        flags = ("FP16",) if precision == "FP16" else ("INT8", "FP16")
        return BuildPlan(flags, False, precision == "INT8" and not is_quantized)
    if precision == "FP16":
        return BuildPlan((), True, False)
    if is_quantized:
        return BuildPlan((), False, False)
    raise TensorRTError(
        "TensorRT 11 and later build INT8 engines only from models quantized with "
        "Q/DQ nodes; quantize the ONNX file with NVIDIA ModelOpt (python -m "
        "modelopt.onnx.quantization) or use --precision FP16."
    )


def float16_model(model):
    """`model` (an `onnx.ModelProto`) with float tensors in float16, inputs and outputs kept.

    Zeros stay zeros, so 2:4 weights stay 2:4.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


class TensorRTEngine:
    """A built engine, its execution context, device buffers and CUDA stream.

    Build it with `TensorRTEngine.build`; use it as a context manager (or call
    `close`) to free its device memory.
    """

    def __init__(self, engine, input_shapes, sparsity):
        import tensorrt as trt

        cudart = _cuda_runtime()
        self.sparsity = sparsity
        self._cudart = cudart
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = _checked(cudart, cudart.cudaStreamCreate())
        self._buffers = {}  # name -> (device pointer, shape, dtype)
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        self.input_names = [
            name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        ]
        for name in self.input_names:
            self._context.set_input_shape(name, input_shapes[name])
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            pointer = _checked(
                cudart, cudart.cudaMalloc(max(int(np.prod(shape)), 1) * dtype.itemsize)
            )
            self._buffers[name] = (pointer, shape, dtype)
            self._context.set_tensor_address(name, int(pointer))

    @classmethod
    def build(cls, onnx_path, input_shapes, precision="FP16", sparse=True, calibration=()):
        """Parses `onnx_path` and builds an engine for exactly `input_shapes`.

        Args:
            onnx_path: the ONNX file.
            input_shapes: input name -> shape (batch included) to build for.
            precision: "FP32", "FP16" or "INT8" (see the module docstring).
            sparse: set `BuilderFlag.SPARSE_WEIGHTS`.
            calibration: INT8 calibration batches (dicts of arrays by input
                name) for TensorRT 10's implicit quantization.
        """
        import onnx
        import tensorrt as trt

        model = onnx.load(onnx_path)
        quantized = any(node.op_type == "QuantizeLinear" for node in model.graph.node)  # Q/DQ
        plan = build_plan(precision, hasattr(trt.BuilderFlag, "FP16"), quantized)
        logger = _capturing_logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(_network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        parsed = (
            parser.parse(float16_model(model).SerializeToString())
            if plan.to_float16
            else parser.parse_from_file(onnx_path)
        )
        if not parsed:
            errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
            first = errors[0] if errors else "no error given"
            raise TensorRTError(f"TensorRT could not parse '{onnx_path}' ({first}).")
        config = builder.create_builder_config()
        if sparse:
            config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        for flag in plan.flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        profile = builder.create_optimization_profile()
        for index in range(network.num_inputs):
            name = network.get_input(index).name
            profile.set_shape(name, input_shapes[name], input_shapes[name], input_shapes[name])
        config.add_optimization_profile(profile)
        calibrator = None
        if plan.calibrate:
            calibrator = _calibrator(trt, list(calibration), _cuda_runtime())
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if calibrator is not None:
            calibrator.free()
        if serialized is None:
            raise TensorRTError(
                f"TensorRT could not build an engine from '{onnx_path}' "
                f"({logger.errors[-1] if logger.errors else 'no error logged'})."
            )
        engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        return cls(engine, input_shapes, sparsity_from_log(logger.lines))

    def set_inputs(self, arrays):
        """Copies input arrays (by name) to the engine's device buffers."""
        for name in self.input_names:
            pointer, shape, dtype = self._buffers[name]
            array = np.ascontiguousarray(arrays[name], dtype=dtype).reshape(shape)
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            _checked(
                self._cudart,
                self._cudart.cudaMemcpy(pointer, array.ctypes.data, array.nbytes, kind),
            )

    def execute(self):
        """Queues one inference on the engine's stream."""
        if not self._context.execute_async_v3(int(self._stream)):
            raise TensorRTError("TensorRT could not enqueue the engine.")

    def synchronize(self, _outputs=None):
        """Waits for every queued inference (a `measure_throughput` wait callback)."""
        _checked(self._cudart, self._cudart.cudaStreamSynchronize(self._stream))

    def outputs(self):
        """Copies the outputs back: output name -> array."""
        arrays = {}
        for name, (pointer, shape, dtype) in self._buffers.items():
            if name in self.input_names:
                continue
            array = np.empty(shape, dtype)
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            _checked(
                self._cudart,
                self._cudart.cudaMemcpy(array.ctypes.data, pointer, array.nbytes, kind),
            )
            arrays[name] = array
        return arrays

    def close(self):
        """Frees the device buffers and the stream."""
        for pointer, _, _ in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers = {}
        self._cudart.cudaStreamDestroy(self._stream)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _cuda_runtime():
    """cuda-python's runtime API module (`cuda.bindings.runtime`, or `cuda.cudart`)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def _checked(cudart, result):
    """The value of a cuda-python call's `(error, value)` result; raises on error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        raise TensorRTError(f"CUDA call failed: {cudart.cudaGetErrorString(error)[1]!r}.")
    return values[0] if len(values) == 1 else None


def _network_flags(trt):
    """Explicit batch: a flag before TensorRT 10, the only mode since."""
    if int(trt.__version__.split(".")[0]) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _capturing_logger(trt):
    """A TensorRT logger that keeps every line and prints errors to stderr."""

    class CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines, self.errors = [], []

        def log(self, severity, message):
            self.lines.append(message)
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(message)
                print(f"TensorRT: {message}", file=sys.stderr)

    return CapturingLogger()


def _calibrator(trt, batches, cudart):
    """An INT8 entropy calibrator (TensorRT 10) fed `batches` from device memory."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._pointers = {}

        def get_batch_size(self):
            return len(next(iter(batches[0].values()))) if batches else 1

        def get_batch(self, names):
            batch = next(self._batches, None)
            if batch is None:
                return None
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            for name in names:
                array = np.ascontiguousarray(batch[name], dtype=np.float32)
                if name not in self._pointers:
                    self._pointers[name] = _checked(cudart, cudart.cudaMalloc(array.nbytes))
                _checked(
                    cudart,
                    cudart.cudaMemcpy(self._pointers[name], array.ctypes.data, array.nbytes, kind),
                )
            return [int(self._pointers[name]) for name in names]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache):
            return None

        def free(self):
            for pointer in self._pointers.values():
                cudart.cudaFree(pointer)

    return Calibrator()
