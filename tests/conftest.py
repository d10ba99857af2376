"""Shared test set-up: quiet TensorFlow, deterministic Keras, small models,
the demo model of main.py, and running the repository's scripts."""

import importlib.util
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same Keras, NumPy and TF random state."""
    keras.utils.set_random_seed(1234)
    keras.backend.clear_session()
    yield


def small_mlp(hidden=64, inputs=32, outputs=16):
    """Dense(inputs->hidden) -> ReLU -> Dense(hidden->outputs), built."""
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu", name="hidden"),
            keras.layers.Dense(outputs, name="out"),
        ]
    )


def regression_data(model, samples=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples,) + tuple(model.input_shape[1:]))
    y = rng.standard_normal((samples,) + tuple(model.output_shape[1:]))
    return x.astype("float32"), y.astype("float32")


def load_script(name):
    """Imports REPO/name.py as a module, without touching sys.path."""
    spec = importlib.util.spec_from_file_location(name, REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_command(*args, env=None):
    """Runs `python *args` from the repository root; returns the result."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def last_line(text):
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """main.py's demo, fine-tuned a few steps and exported: (model, SavedModel path)."""
    path = tmp_path_factory.mktemp("demo") / "exported_model"
    model = load_script("main").run(steps=3, batch_size=16, output_dir=str(path))
    return model, str(path)


@pytest.fixture(scope="session")
def demo_onnx(demo):
    """The demo's SavedModel exported to ONNX by tf_asp.export: its path."""
    from tf_asp.export import export_onnx

    _, path = demo
    export_onnx(path, path + ".onnx")
    return path + ".onnx"
