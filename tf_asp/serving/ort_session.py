"""An ONNX Runtime session called like a SavedModel signature.

```python
session = OnnxRuntimeSession("model.onnx")
session.provider                   # "CPUExecutionProvider", or CUDA when present
outputs = session(image=batch)     # {"output_0": array}, NumPy in and out
```

The CUDA execution provider is used when this onnxruntime has it (the
`onnxruntime-gpu` wheel); then each call copies its NumPy inputs to the GPU.
"""

ORT_MISSING = (
    "Serving with ONNX Runtime needs the onnxruntime package, which is not "
    "installed; install it with `pip install 'tf_asp[onnx]'` (or onnxruntime-gpu "
    "for its CUDA provider)."
)
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeSession:
    """Runs an ONNX file with the best execution provider ONNX Runtime has here.

    Attributes:
        provider: the execution provider that runs the model.
        input_names: the model's input names, in order.
        output_names: the model's output names, in order.
    """

    def __init__(self, onnx_path, threads=None):
        """Opens `onnx_path`; `threads` caps the CPU threads per op (default: all cores)."""
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError(ORT_MISSING) from error

        available = onnxruntime.get_available_providers()
        providers = [name for name in PREFERRED_PROVIDERS if name in available]
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                onnx_path, sess_options=options, providers=providers
            )
        except Exception as error:  # not ONNX, or ops this runtime lacks
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(
                f"ONNX Runtime could not load '{onnx_path}' ({type(error).__name__}: {first})."
            ) from error
        self.provider = self._session.get_providers()[0]
        self.input_names = [tensor.name for tensor in self._session.get_inputs()]
        self.output_names = [tensor.name for tensor in self._session.get_outputs()]

    def __call__(self, **inputs):
        """Runs one batch: NumPy arrays by input name -> arrays by output name."""
        return dict(zip(self.output_names, self._session.run(self.output_names, inputs)))
