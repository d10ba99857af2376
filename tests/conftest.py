"""Shared test set-up: quiet TensorFlow, and an opt-in fresh Keras state.

Helpers (models, data, checks) live in `helpers.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import pytest


@pytest.fixture
def fresh_keras():
    """The same Keras, NumPy and TF random state, and no leftover layers.

    Keras-using modules opt in with
    `pytestmark = pytest.mark.usefixtures("fresh_keras")`.
    """
    keras.utils.set_random_seed(1234)
    keras.backend.clear_session()
    yield


@pytest.fixture
def fresh_tf_keras():
    """`fresh_keras` for tf_keras (Keras 2) modules, which opt in with
    `pytestmark = pytest.mark.usefixtures("fresh_tf_keras")`."""
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(1234)
    tf_keras.backend.clear_session()
    yield
