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

# model -> (prunable layers C-permuted, prunable layers). DenseNet121 and
# InceptionV3 read channel concatenations (58/120 and 57/94 before tf_asp
# permuted through them); Xception's pointwise kernels follow depthwise ones.
ZOO = {
    "ResNet50": (53, 53),
    "MobileNetV2": (33, 33),
    "DenseNet121": (120, 120),
    "InceptionV3": (94, 94),
    "EfficientNetB0": (38, 38),
    "ConvNeXtTiny": (40, 40),
    "Xception": (12, 12),
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
    assert len(permuted) >= 0.9 * len(prunable)
