"""Shared test set-up: quiet TensorFlow, deterministic Keras, small models."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest


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
