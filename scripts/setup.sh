#!/usr/bin/env bash
# Sets up everything tf_asp needs on a fresh Debian/Ubuntu machine with
# Python 3.10+: graphviz (for op-graph plots), TensorFlow 2.21 (CPU), the
# test tools, tf2onnx/onnx/onnxruntime (ONNX export and serving), tf_keras
# (Keras 2: tf_asp.keras2 and its tests), and tf_asp itself in editable mode,
# which compiles the search kernels.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dot >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq graphviz >/dev/null
    else
        echo "graphviz's 'dot' is missing: sudo apt-get install -y graphviz" >&2
    fi
fi

python3 -m pip install -q --upgrade pip
python3 -m pip install -q -e ".[cpu,test,onnx]"
# tf_keras pins the full `tensorflow` distribution; tensorflow-cpu provides it.
python3 -m pip install -q --no-deps "tf-keras==2.21.0"
