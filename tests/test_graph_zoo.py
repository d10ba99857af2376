"""keras.applications models keep their function under channel permutation.

Every model is built offline (`weights=None`), its normalization statistics
randomized, and a random permutation applied to every group. The C-permuted
counts are pinned: a change in what tf_asp can reach shows up here.
"""

import keras
import pytest
from helpers import permute_randomly
from helpers import randomize_normalization

from tf_asp import registry

pytestmark = pytest.mark.usefixtures("fresh_keras")

# model -> (prunable layers C-permuted, prunable layers). DenseNet121's 1x1
# convolutions read channel concatenations, which tf_asp does not permute.
ZOO = {
    "ResNet50": (53, 53),
    "MobileNetV2": (33, 33),
    "DenseNet121": (58, 120),
    "EfficientNetB0": (38, 38),
    "ConvNeXtTiny": (40, 40),
}


def prunable_layers(model):
    return [g.layer for g in registry.gemm_layers(model) if g.prunable_kernels()]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_keeps_its_function(name):
    model = getattr(keras.applications, name)(weights=None)
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= 1e-5
    prunable = prunable_layers(model)
    permuted = {id(k.layer) for g in groups if g.skip_reason is None for k in g.prunable_consumers}
    assert permuted <= {id(layer) for layer in prunable}
    print(f"{name}: {len(permuted)}/{len(prunable)} prunable layers C-permuted")
    assert (len(permuted), len(prunable)) == ZOO[name]
    if name == "ResNet50":
        assert len(permuted) >= 0.9 * len(prunable)
