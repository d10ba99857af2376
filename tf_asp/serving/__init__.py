"""Serving an exported ONNX model: ONNX Runtime (`ort_session`) and TensorRT (`trt_engine`).

`tftrt_infer.py` and `benchmarks/onnx_runtime.py` time them against native
TensorFlow. Neither module needs TensorFlow; each imports its runtime when it
is used, and says in one sentence how to install it when it is missing.
"""
