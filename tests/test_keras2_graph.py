"""Channel permutation on Keras 2 (tf_keras) graphs.

tf_keras emits `FusedBatchNormV3` and `BiasAdd`, and its `MatMul` and `Conv2D`
read variables captured as `variable.handle`: the permutation resolves them,
K-permutes every per-channel variable with its channels, and keeps the
model's function.
"""

import re

import numpy as np
import pytest
import tf_keras
from helpers import permute_randomly
from helpers import permuted_sets
from helpers import randomize_normalization
from helpers import small_convnet

from tf_asp import registry
from tf_asp.graph import permute_model
from tf_asp.graph.groups import find_groups
from tf_asp.graph.plot import plot_graph
from tf_asp.graph.trace import trace_model

pytestmark = pytest.mark.usefixtures("fresh_tf_keras")

# model -> (prunable layers C-permuted, prunable layers), as for Keras 3.
ZOO = {"ResNet50": (53, 53), "MobileNetV2": (33, 33)}


def convnet():
    model = small_convnet(api=tf_keras)
    randomize_normalization(model)
    return model


def test_a_tf_keras_graph_reads_variables_through_fused_batch_norm_and_bias_add():
    graph = trace_model(convnet())
    types = {op.type for op in graph.ops}
    assert {"FusedBatchNormV3", "BiasAdd", "Conv2D", "MatMul"} <= types
    reads = [op for op in graph.ops if op.type == "ReadVariableOp"]
    assert reads and all(graph.variable(op) is not None for op in reads)


def test_fused_batch_norm_variables_and_the_bias_move_with_their_channels():
    model = convnet()
    groups, _ = find_groups(trace_model(model))
    (group,) = [g for g in groups if g.consumer_names == ["conv_2"]]
    bn, conv1 = model.get_layer("norm"), model.get_layer("conv_1")
    expected = [conv1.bias, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance]
    assert group.skip_reason is None and group.producer_names == ["conv_1"]
    assert {id(v) for v in group.vectors} == {id(v) for v in expected}


def test_a_random_permutation_keeps_the_function_of_a_tf_keras_model():
    groups, error = permute_randomly(convnet())
    assert error <= 1e-5
    assert permuted_sets(groups) == (
        {"conv_2", "dense_1", "dense_2"},
        {"conv_1", "conv_2", "dense_1"},
    )


def test_permute_model_searches_and_verifies_a_tf_keras_model():
    model = convnet()
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 16)).astype("float32")
    before = model(x).numpy()
    summary = permute_model(model, search_device="numpy", search_time_limit=5)
    assert summary.error <= 1e-5 and len(summary.groups) == 3
    assert [s.consumers for s in summary.skipped] == [("conv_1",)]  # reads the model input
    np.testing.assert_allclose(model(x).numpy(), before, rtol=1e-5, atol=1e-5)


def test_the_op_graph_plot_of_a_tf_keras_model(tmp_path):
    graph = trace_model(convnet())
    groups, roles = find_groups(graph)
    text = open(plot_graph(graph, roles, groups, tmp_path / "model.dot")).read()
    (group,) = [g for g in groups if g.consumer_names == ["conv_2"]]

    def node(op_name):
        match = re.search(rf'"{re.escape(op_name)}" \[label="([^"]*)", fillcolor=(\w+)', text)
        assert match, f"no node {op_name} in the plot"
        return match.group(1), match.group(2)

    label, colour = node("small_convnet/norm/FusedBatchNormV3")
    assert colour == "orange" and label.endswith(f"#{group.id} [K]")
    label, colour = node("small_convnet/conv_1/BiasAdd")
    assert colour == "orange" and label.endswith(f"#{group.id} [K]")
    label, colour = node("small_convnet/conv_2/Conv2D")
    assert colour == "palegreen" and label.endswith("[K,C] S")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_tf_keras_zoo_model_keeps_its_function(name):
    model = getattr(tf_keras.applications, name)(weights=None)
    randomize_normalization(model)

    groups, error = permute_randomly(model)

    assert error <= 1e-5
    prunable = [g.layer for g in registry.gemm_layers(model) if g.prunable_kernels()]
    permuted = {id(k.layer) for g in groups if g.skip_reason is None for k in g.prunable_consumers}
    assert permuted <= {id(layer) for layer in prunable}
    print(f"tf_keras {name}: {len(permuted)}/{len(prunable)} prunable layers C-permuted")
    assert (len(permuted), len(prunable)) == ZOO[name]
    if name == "ResNet50":
        assert len(permuted) >= 0.9 * len(prunable)
