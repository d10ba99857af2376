"""Shared test set-up: quiet TensorFlow, an opt-in fresh Keras state, and the
main.py demo model as session fixtures.

Helpers (models, data, checks, running scripts) live in `helpers.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import pytest
from helpers import load_script


@pytest.fixture
def fresh_keras():
    """The same Keras, NumPy and TF random state, and no leftover layers.

    Keras-using modules opt in with
    `pytestmark = pytest.mark.usefixtures("fresh_keras")`.
    """
    keras.utils.set_random_seed(1234)
    keras.backend.clear_session()
    yield


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


@pytest.fixture
def fresh_tf_keras():
    """`fresh_keras` for tf_keras (Keras 2) modules, which opt in with
    `pytestmark = pytest.mark.usefixtures("fresh_tf_keras")`."""
    import tf_keras

    tf_keras.utils.set_random_seed(1234)
    tf_keras.backend.clear_session()
    yield
